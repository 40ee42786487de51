"""`nitrogen distill` end to end on recorded Freeway frames and the tiny golden checkpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nitrogen.cli import app
from nitrogen.inference.session import InferenceSession
from nitrogen.model.card import file_sha256
from nitrogen.model.checkpoint import load_model, read_checkpoint
from nitrogen.model.modeling import NitroGenModel
from nitrogen.training.distill import (
    DistillConfig,
    DistillTargets,
    _Rows,
    distill_finetune_config,
    euler_states,
    grid_targets,
    teacher_targets,
)
from nitrogen.training.state import latest_step
from nitrogen.training.testing import kill_at_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEFAULT_AGENT = REPO / "nitrogen" / "assets" / "default-agent" / "model.pt"
runner = CliRunner()
FAST = ["--set=progress=false", "--set=batch_size=4", "--set=log_every=1", "--max-frames", "16", "--eval-frames", "8"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A real dataset: two Freeway episodes of scripted play, recorded by ``nitrogen record``'s writer."""
    from nitrogen.envs import make_env
    from nitrogen.runtime.dataset_writer import record
    from nitrogen.runtime.sources import make_policy

    out = tmp_path_factory.mktemp("distill-data") / "freeway"
    env = make_env("ale:Freeway")
    policy = make_policy("scripted", env=env, seed=0)
    try:
        record(env, policy, episodes=3, out_dir=out, seed=0, max_frames=60, shard_frames=100)
    finally:
        env.close()
        policy.close()
    return out


def _cond(model: NitroGenModel, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = model.vision_spec.image_size
    pixels = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    feats = model.encode_frames(pixels)
    return model.condition(model.vl_tokens(list(feats[:, None]), [None] * batch))


@torch.no_grad()
def test_euler_states_end_where_sample_ends(tiny_ckpt: Path) -> None:
    model, _ = load_model(tiny_ckpt)
    cond = _cond(model, 3)
    noise = torch.randn(3, 18, 25, generator=torch.Generator().manual_seed(1))
    states = euler_states(model, cond, noise, 4)
    assert len(states) == 5 and torch.equal(states[0], noise)
    torch.testing.assert_close(states[-1], model.sample(cond, noise, 4), rtol=0, atol=1e-6)


@torch.no_grad()
def test_targets_are_flow_matching_samples_on_the_student_grid(tiny_ckpt: Path) -> None:
    """An item's (actions, noise, t) mix to the state x and have the velocity v, at the sampler's buckets."""
    model, _ = load_model(tiny_ckpt)
    cond = _cond(model, 2)
    noise = torch.randn(2, 18, 25, generator=torch.Generator().manual_seed(2))
    for method, label_steps in (("reflow", 4), ("progressive", 4)):
        labels = teacher_targets(model, cond, noise, method=method, label_steps=label_steps, steps=2)
        x, v = grid_targets(labels, 2)
        assert x.shape == v.shape == (2, 2, 18, 25)
        if method == "reflow":  # a straight path: the end of it is the 4-step chunk
            torch.testing.assert_close(x[:, 0] + v[:, 0], model.sample(cond, noise, 4), rtol=0, atol=1e-5)
        else:  # two teacher steps in one: x_1 = x_0 + v_0 / 2 is the teacher's state after 2 of 4 steps
            torch.testing.assert_close(x[:, 0] + v[:, 0] / 2, x[:, 1], rtol=0, atol=1e-5)

        class Frames(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return 2

            def __getitem__(self, i: int) -> dict:
                return {"pixels": torch.zeros(1, 3, 8, 8), "frame_valid": torch.ones(1, dtype=torch.bool)}

        buckets = model.step_buckets(2).tolist()
        ds = DistillTargets(_Rows(Frames(), [0, 1]), x[:, None], v[:, None], buckets, 1000)
        assert len(ds) == 4
        for j in range(4):
            item = ds[j]
            n, i = j // 2, j % 2
            t = item["t"]
            torch.testing.assert_close((1 - t) * item["noise"] + t * item["actions"], x[n, i], rtol=0, atol=1e-5)
            torch.testing.assert_close(item["actions"] - item["noise"], v[n, i], rtol=0, atol=1e-5)
            assert int(t * 1000) == buckets[i]  # what flow_matching_loss computes is the sampler's bucket


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = distill_finetune_config()
    assert (cfg.mode, cfg.vision_frozen, cfg.freeze_mixer, cfg.disable_dropout) == ("full", True, True, True)
    assert distill_finetune_config(None, ["mode=lora", "max_steps=7"]).max_steps == 7
    (tmp_path / "c.json").write_text(json.dumps({"lr": 1e-3}))
    from_file = distill_finetune_config(tmp_path / "c.json")
    assert from_file.lr == 1e-3 and from_file.freeze_mixer  # the file's fields on top of the defaults
    assert DistillConfig(method="progressive", steps=2).stages(16) == [(16, 8), (8, 4), (4, 2)]
    assert DistillConfig(steps=2).stages(16) == [(16, 2)]
    with pytest.raises(ValueError, match="power of two"):
        DistillConfig(method="progressive", steps=3, teacher_steps=16)
    with pytest.raises(ValueError, match="power of two"):
        DistillConfig(method="progressive", steps=16).stages(16)


def test_released_format_is_untouched(tiny_ckpt: Path) -> None:
    raw = read_checkpoint(tiny_ckpt)
    assert raw.config.distillation() is None
    assert "distillation" not in raw.config.to_dict()


def test_reflow_student_end_to_end(frames: Path, tmp_path: Path) -> None:
    """The shipped agent (a trained 16-step teacher) distilled to 1 step for a few dozen steps."""
    out = tmp_path / "student"
    args = ["distill", "--data", str(frames), "--teacher", str(DEFAULT_AGENT), "--steps", "1", "--out", str(out)]
    sets = ["--set=max_steps=30", "--set=batch_size=8", "--set=eval_every=15", "--set=save_every=15"]
    result = runner.invoke(app, args + FAST + sets)
    assert result.exit_code == 0, result.output
    # The same safe loader reads it; the config says 1 step, so the session samples with 1 by default.
    student, raw = load_model(out / "model.pt")
    teacher, traw = load_model(DEFAULT_AGENT)
    assert raw.config.model_cfg.num_inference_timesteps == 1
    assert {k: tuple(v.shape) for k, v in student.state_dict().items()} == {
        k: tuple(v.shape) for k, v in teacher.state_dict().items()
    }
    session = InferenceSession.from_checkpoint(out / "model.pt")
    assert session.num_steps == 1
    record = raw.config.distillation()
    assert record is not None
    assert record["method"] == "reflow" and record["steps"] == 1 and record["teacher"] == str(DEFAULT_AGENT)
    assert record["teacher_sha256"] == file_sha256(DEFAULT_AGENT)
    # Only the denoiser changed: the vision tower and the mixer are frozen by default.
    t_state, s_state = teacher.state_dict(), student.state_dict()
    frozen = [k for k in t_state if k.startswith(("vision_encoder.", "vl_self_attention_model."))]
    assert frozen and all(torch.equal(t_state[k], s_state[k]) for k in frozen)
    assert any(not torch.equal(t_state[k], s_state[k]) for k in t_state if k.startswith("model."))
    # The trainer's outputs: metrics with the agreement eval, curves, checkpoints, the run record.
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    # Step 1's loss is the teacher's own 1-step error on the targets (logged before its update):
    # the student fits the 16-step teacher's chunks better than the teacher does in 1 step.
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]
    assert rows[-1]["eval_first_action_acc"] != ""
    assert (out / "curves.png").stat().st_size > 0 and latest_step(out) == 30
    assert (
        json.loads((out / "distill.json").read_text())["teacher_steps"] == traw.config.model_cfg.num_inference_timesteps
    )
    shown = runner.invoke(app, ["info", str(out / "model.pt")], terminal_width=200)
    assert shown.exit_code == 0 and "reflow distillation to 1 steps" in shown.output
    doc = json.loads(runner.invoke(app, ["info", str(out / "model.pt"), "--json"]).output)
    assert doc["distillation"]["teacher_sha256"] == record["teacher_sha256"]
    # A rerun reuses the cached labels (the shard files are not rewritten).
    shards = sorted((out / "labels").rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = runner.invoke(app, args + FAST + sets + ["--resume"])
    assert again.exit_code == 0, again.output
    assert shards and [p.stat().st_mtime_ns for p in shards] == stamps


def test_progressive_stages_halve_the_steps(frames: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "progressive"
    args = ["distill", "--data", str(frames), "--teacher", str(tiny_ckpt), "--steps", "1", "--out", str(out)]
    result = runner.invoke(app, args + FAST + ["--method", "progressive", "--set=max_steps=3"])
    assert result.exit_code == 0, result.output
    stage = read_checkpoint(out / "stages" / "2-steps" / "model.pt").config
    assert stage.model_cfg.num_inference_timesteps == 2
    record = read_checkpoint(out / "model.pt").config.distillation()
    assert record["stages"] == [{"label_steps": 4, "steps": 2}, {"label_steps": 2, "steps": 1}]
    bad = runner.invoke(app, args + FAST + ["--method", "progressive", "--steps", "3"])
    assert bad.exit_code == 1 and "power of two" in bad.output


def test_distill_resumes_after_sigkill(frames: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nitrogen.cli", "distill", "--data", str(frames), "--teacher", str(tiny_ckpt)]
    cmd += ["--steps", "2", "--out", str(out), *FAST, "--set=max_steps=60", "--set=save_every=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    rc = kill_at_checkpoint(cmd, out, 4, 120, cwd=REPO, env=env)
    assert rc == -signal.SIGKILL
    killed_at = latest_step(out)
    assert killed_at is not None and 4 <= killed_at < 60
    assert not (out / "model.pt").exists()
    done = subprocess.run(
        cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert latest_step(out) == 60
    with open(out / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 61))
    assert read_checkpoint(out / "model.pt").config.model_cfg.num_inference_timesteps == 2
