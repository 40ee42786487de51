"""hf:// checkpoint names, offline, against a hub cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nitrogen.errors import CheckpointError
from nitrogen.model.checkpoint import read_checkpoint
from nitrogen.model.hub import DEFAULT_FILES, HubRef, parse_hub_ref

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[2]


def hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """``HF_HOME/hub/models--OWNER--REPO`` with blobs (named by sha256), ``snapshots/COMMIT/FILE``
    symlinks to them, and ``refs/main``: huggingface_hub's own cache layout."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo


@pytest.fixture
def offline_hub(tmp_path, tiny_ckpt, monkeypatch) -> Path:
    from huggingface_hub import constants

    home = tmp_path / "hf"
    hub_cache(home, "owner/tiny", {"tiny.pt": tiny_ckpt, "sub/dir/tiny.pt": tiny_ckpt})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_names_parse_with_defaults_files_and_revisions():
    assert parse_hub_ref("hf://nvidia/NitroGen") == HubRef("nvidia/NitroGen", DEFAULT_FILES["nvidia/NitroGen"])
    assert DEFAULT_FILES["nvidia/NitroGen"] == "ng.pt"
    assert parse_hub_ref("hf://nvidia/NitroGen@v1") == HubRef("nvidia/NitroGen", "ng.pt", "v1")
    assert parse_hub_ref("hf://a/b/sub/m.safetensors@" + COMMIT) == HubRef("a/b", "sub/m.safetensors", COMMIT)
    for bad, said in (
        ("hf://a/b", "gives no file"),
        ("hf://a", "OWNER/REPO"),
        ("hf://a/b/../x.pt", "plain path"),
        ("hf://a/b/x.pt@", "revision"),
        ("hf://a b/c/x.pt", "OWNER/REPO"),
    ):
        with pytest.raises(CheckpointError, match=said):
            parse_hub_ref(bad)


def test_a_cached_checkpoint_loads_offline_like_the_local_file(offline_hub, tiny_ckpt):
    local = read_checkpoint(tiny_ckpt)
    for name in ("hf://owner/tiny/tiny.pt", f"hf://owner/tiny/tiny.pt@{COMMIT}", "hf://owner/tiny/sub/dir/tiny.pt"):
        raw = read_checkpoint(name)
        assert raw.path.is_relative_to(offline_hub) and raw.config == local.config
        assert raw.state_dict.keys() == local.state_dict.keys()
        assert all((raw.state_dict[k] == v).all() for k, v in local.state_dict.items())


def test_a_ckpt_policy_runs_from_the_hub(offline_hub):
    from nitrogen.runtime.sources import make_policy

    policy = make_policy("ckpt:hf://owner/tiny/tiny.pt", device="cpu", seed=0)
    try:
        assert policy.predict(np.zeros((64, 64, 3), np.uint8)).action_tensor.shape == (18, 25)
    finally:
        policy.close()


def test_offline_and_not_cached_is_a_clear_error(offline_hub):
    with pytest.raises(CheckpointError, match="not in the local HF cache.*HF_HUB_OFFLINE is set"):
        read_checkpoint("hf://nvidia/NitroGen")
    with pytest.raises(CheckpointError, match="not in the local HF cache"):
        read_checkpoint("hf://owner/tiny/tiny.pt@fedcba9876543210fedcba9876543210fedcba98")


def test_the_command_line_honours_hf_home_and_hf_hub_offline(tmp_path, tiny_ckpt):
    home = tmp_path / "hf"
    hub_cache(home, "owner/tiny", {"tiny.pt": tiny_ckpt})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
    }
    run = [sys.executable, "-m", "nitrogen.cli", "info", "--json"]
    ok = subprocess.run(
        [*run, "hf://owner/tiny/tiny.pt"], check=False, capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["checkpoint"] == "hf://owner/tiny/tiny.pt" and doc["parameters"] > 0
    assert Path(doc["file"]).is_relative_to(home)
    missing = subprocess.run(
        [*run, "hf://nvidia/NitroGen"], check=False, capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert missing.returncode == 1
    text = " ".join(missing.stderr.split())
    assert "hf://nvidia/NitroGen/ng.pt" in text and "HF_HUB_OFFLINE is set" in text


def test_convert_and_finetune_accept_hub_names(offline_hub, tmp_path):
    from typer.testing import CliRunner

    from nitrogen.cli import app
    from nitrogen.training.run import starting_checkpoint

    out = tmp_path / "tiny.safetensors"
    result = CliRunner().invoke(app, ["convert", "hf://owner/tiny/tiny.pt", str(out)])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(out).config == read_checkpoint("hf://owner/tiny/tiny.pt").config
    assert starting_checkpoint("hf://owner/tiny/tiny.pt").path.is_relative_to(offline_hub)
