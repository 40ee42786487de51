"""`nitrogen finetune` end to end: a real parquet of Breakout frames, the tiny golden checkpoints."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nitrogen import InferenceSession
from nitrogen.cli import app
from nitrogen.data import BUTTON_COLUMNS
from nitrogen.model.checkpoint import read_checkpoint, save_checkpoint, vision_spec_for

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
    for name, second in (("games", "beta"), ("games_unknown", "omega")):
        named = dict(cols, game=["alpha" if ep < 2 else second for ep in cols["episode_id"]])
        table = datasets.Dataset.from_dict(named).cast_column("image", datasets.Image())
        table.to_parquet(str(root / f"{name}.parquet"))
    return root


@pytest.fixture(scope="module")
def game_ckpt(golden_dir, tmp_path_factory) -> Path:
    """The golden game-conditioned checkpoint (games "", alpha, beta) with a fourth game, gamma,
    so that a game absent from the data has a row that must stay as it was."""
    raw = read_checkpoint(golden_dir / "game_padded.pt")
    table = raw.state_dict["game_embedding.weight"]  # (games, D)
    gamma = torch.randn(1, table.shape[1], generator=torch.Generator().manual_seed(0))
    state = raw.state_dict | {"game_embedding.weight": torch.cat([table, gamma])}
    path = tmp_path_factory.mktemp("games") / "four_games.pt"
    save_checkpoint(path, state, raw.config, raw.game_mapping | {"gamma": 3})
    return path


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


def test_finetune_command_on_a_224_tower_trains_on_224_frames(gameplay, tiny_ckpt_224, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "frames"
    args = ["finetune", "--data", str(gameplay / "clean.parquet"), "--ckpt", str(tiny_ckpt_224), "--out", str(out)]
    args += ["--eval-fraction", "0.25", "--cache-dir", str(cache)]
    overrides = ["max_steps=3", "batch_size=2", "save_every=0", "progress=false"]
    result = runner.invoke(app, args + [f"--set={o}" for o in overrides])
    assert result.exit_code == 0, result.output
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())][-1] == 3
    (frames,) = cache.glob("*.npy")  # the frames the run trained and evaluated on
    assert np.load(frames, mmap_mode="r").shape == (120, 224, 224, 3)
    assert vision_spec_for(read_checkpoint(out / "model.pt")).image_size == 224
    session = InferenceSession.from_checkpoint(out / "model.pt", device="cpu")
    assert session.predict(np.zeros((210, 160, 3), np.uint8)).action_tensor.shape == (18, 25)


def _finetune_games(data: Path, ckpt: Path, out: Path, steps: int):
    args = ["finetune", "--data", str(data), "--ckpt", str(ckpt), "--out", str(out), "--eval-fraction", "0"]
    overrides = [f"max_steps={steps}", "batch_size=2", "save_every=0", "progress=false", "lr=1e-3"]
    return runner.invoke(app, args + [f"--set={o}" for o in overrides])


def _game_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "game" in r.getMessage()]


def test_finetune_trains_the_embedding_rows_of_the_games_in_the_data(gameplay, game_ckpt, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = _finetune_games(gameplay / "games.parquet", game_ckpt, tmp_path / "run", steps=20)
    assert result.exit_code == 0, result.output
    assert _game_warnings(caplog) == []
    before = read_checkpoint(game_ckpt)
    after = read_checkpoint(tmp_path / "run" / "model.pt")
    assert after.game_mapping == {"": 0, "alpha": 1, "beta": 2, "gamma": 3}
    rows_before, rows_after = before.state_dict["game_embedding.weight"], after.state_dict["game_embedding.weight"]
    changed = [not torch.equal(rows_before[g], rows_after[g]) for g in range(4)]
    assert changed == [False, True, True, False]  # alpha and beta trained; "" and gamma (not in the data) kept
    frame, noise = np.zeros((210, 160, 3), np.uint8), np.random.default_rng(0).standard_normal((18, 25))
    chunks = {
        game: InferenceSession.from_checkpoint(tmp_path / "run" / "model.pt", device="cpu", game=game)
        .predict(frame, noise=noise.astype(np.float32))
        .action_tensor
        for game in ("alpha", "beta")
    }
    assert not np.allclose(chunks["alpha"], chunks["beta"])


def test_finetune_says_once_which_games_the_mapping_lacks(gameplay, game_ckpt, tiny_ckpt, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = _finetune_games(gameplay / "games_unknown.parquet", game_ckpt, tmp_path / "unknown", steps=1)
    assert result.exit_code == 0, result.output
    (message,) = _game_warnings(caplog)
    assert message.startswith("games ['omega'] are not in the checkpoint's game mapping")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = _finetune_games(gameplay / "clean.parquet", game_ckpt, tmp_path / "no_column", steps=1)
    assert result.exit_code == 0, result.output
    (message,) = _game_warnings(caplog)
    assert "no 'game' column" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a checkpoint without games has nothing to say about them
        result = _finetune_games(gameplay / "games.parquet", tiny_ckpt, tmp_path / "no_games", steps=1)
    assert result.exit_code == 0, result.output
    assert _game_warnings(caplog) == []
