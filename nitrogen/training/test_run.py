"""prepare_finetune: a run assembled from a real parquet (written by ``datasets``) and real checkpoints."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nitrogen.data import BUTTON_COLUMNS, MAPPING_PRESETS
from nitrogen.model.checkpoint import read_checkpoint
from nitrogen.training.config import FinetuneConfig
from nitrogen.training.run import PreparedFinetune, prepare_finetune

EPISODES, FRAMES = 4, 24


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import datasets

    rng = np.random.default_rng(0)
    cols: dict[str, list] = {"image": [], "episode_id": [], "frame": [], "game": [], "j_left": [], "j_right": []}
    cols.update({name: [] for name in BUTTON_COLUMNS})
    for episode in range(EPISODES):
        for f in range(FRAMES):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(buf, format="PNG")
            cols["image"].append({"bytes": buf.getvalue(), "path": None})
            cols["episode_id"].append(episode)
            cols["frame"].append(f)
            cols["game"].append("alpha" if episode % 2 else "beta")
            for name in BUTTON_COLUMNS:
                cols[name].append(bool(rng.random() < 0.3))
            cols["j_left"].append([float(rng.uniform(-1, 1)), 0.05])
            cols["j_right"].append([0.0, 0.0])
    path = tmp_path_factory.mktemp("prepare") / "games.parquet"
    datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image()).to_parquet(str(path))
    return path


def test_prepare_finetune_cuts_windows_to_the_checkpoint(parquet: Path, tiny_ckpt_224: Path) -> None:
    prep = prepare_finetune(
        [parquet],
        tiny_ckpt_224,
        overrides=["seed=3", "max_steps=7"],
        mapping="xbox",
        deadzone=0.2,
        context=2,
        eval_fraction=0.5,
    )
    assert isinstance(prep, PreparedFinetune)
    assert (prep.config.seed, prep.config.max_steps) == (3, 7)
    raw = read_checkpoint(tiny_ckpt_224)
    assert (prep.window.image_size, prep.window.context_length) == (224, 2)
    assert prep.window.action_horizon == raw.config.model_cfg.action_horizon
    assert prep.window.action_shift == raw.config.modality_cfg.action_shift
    assert prep.dataset.mapper.config == MAPPING_PRESETS["xbox"].model_copy(update={"deadzone": 0.2})
    item = prep.train[0]
    assert item["pixels"].shape == (2, 3, 224, 224) and "game_ids" not in item  # no game conditioning
    train_eps = {int(prep.dataset.window_episode[i]) for i in prep.train_indices}
    eval_eps = {int(prep.dataset.window_episode[i]) for i in prep.eval_indices}
    assert len(train_eps) == len(eval_eps) == EPISODES // 2 and train_eps.isdisjoint(eval_eps)
    assert len(prep.train) + len(prep.eval) == len(prep.dataset)


def test_prepare_finetune_feeds_game_ids_and_takes_a_config(parquet: Path, golden_dir: Path) -> None:
    raw = read_checkpoint(golden_dir / "game_padded.pt")
    prep = prepare_finetune(parquet, raw, config=FinetuneConfig(lr=5e-4), overrides=["mode=full"], eval_fraction=0)
    assert (prep.config.lr, prep.config.mode) == (5e-4, "full")
    assert prep.checkpoint is raw and prep.eval is None and prep.train_indices == list(range(len(prep.dataset)))
    assert prep.window.image_size == 256
    ids = {prep.dataset.window_game(i): int(prep.dataset[i]["game_ids"]) for i in range(len(prep.dataset))}
    assert ids == {"alpha": raw.game_mapping["alpha"], "beta": raw.game_mapping["beta"]}
    batch = next(iter(torch.utils.data.DataLoader(prep.train, batch_size=4)))
    assert batch["game_ids"].shape == (4,)
