"""`nitrogen finetune` end to end: a real parquet of Breakout frames, the tiny golden checkpoint."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nitrogen import InferenceSession
from nitrogen.cli import app
from nitrogen.data import BUTTON_COLUMNS

runner = CliRunner()


@pytest.fixture(scope="module")
def gameplay(tmp_path_factory) -> Path:
    import ale_py
    import datasets
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0, render_mode="rgb_array")
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {"image": [], "episode_id": [], "frame": [], "j_left": [], "j_right": []}
    cols.update({name: [] for name in BUTTON_COLUMNS})
    obs, _ = env.reset(seed=0)
    for episode in range(4):
        for f in range(30):
            buf = io.BytesIO()
            Image.fromarray(obs).save(buf, format="PNG")
            cols["image"].append({"bytes": buf.getvalue(), "path": None})
            cols["episode_id"].append(episode)
            cols["frame"].append(f)
            fire = bool(rng.random() < 0.5)
            for name in BUTTON_COLUMNS:
                cols[name].append(fire if name == "south" else False)
            cols["j_left"].append([float(rng.uniform(-1, 1)), 0.0])
            cols["j_right"].append([0.0, 0.0])
            obs, *_ = env.step(1 if fire else 0)
    env.close()
    root = tmp_path_factory.mktemp("gameplay")
    table = datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image())
    table.to_parquet(str(root / "clean.parquet"))
    bad = dict(cols)
    bad["j_left"] = list(cols["j_left"])
    bad["j_left"][47] = [0.1, 0.2, 0.3]
    datasets.Dataset.from_dict(bad).cast_column("image", datasets.Image()).to_parquet(str(root / "corrupt.parquet"))
    return root


def test_finetune_command_trains_exports_and_the_model_plays(gameplay, tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--data", str(gameplay / "clean.parquet"), "--ckpt", str(tiny_ckpt), "--out", str(out)]
    overrides = ["max_steps=6", "batch_size=2", "save_every=3", "log_every=1", "progress=false", "lr=1e-3"]
    result = runner.invoke(app, args + ["--eval-fraction", "0.25"] + [f"--set={o}" for o in overrides])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "eval" in result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert (out / "curves.png").is_file() and (out / "adapter.safetensors").is_file()
    assert json.loads((out / "checkpoints" / "step-6" / "state.json").read_text())["step"] == 6
    session = InferenceSession.from_checkpoint(out / "model.pt", device="cpu")
    frame = np.zeros((210, 160, 3), np.uint8)
    assert session.predict(frame).action_tensor.shape == (18, 25)


def test_finetune_command_names_a_corrupt_row(gameplay, tiny_ckpt, tmp_path):
    args = ["finetune", "--data", str(gameplay / "corrupt.parquet"), "--ckpt", str(tiny_ckpt)]
    result = runner.invoke(app, args + ["--out", str(tmp_path / "run"), "--set", "max_steps=1"])
    assert result.exit_code == 1
    assert "corrupt row 47" in result.output and "j_left" in result.output
