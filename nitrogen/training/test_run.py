"""prepare_finetune: a run assembled from a real parquet (written by ``datasets``) and real checkpoints."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nitrogen.data import BUTTON_COLUMNS, MAPPING_PRESETS, CorruptRowError
from nitrogen.inference.preprocessing import resize_frame, to_pixels
from nitrogen.model.checkpoint import read_checkpoint
from nitrogen.training.config import FinetuneConfig
from nitrogen.training.run import PreparedFinetune, prepare_finetune

EPISODES, FRAMES = 4, 24


def _gameplay(images: list[dict], path: Path) -> Path:
    """A parquet of EPISODES x FRAMES rows in the fine-tuning schema with these image cells."""
    import datasets

    rng = np.random.default_rng(1)
    cols: dict[str, list] = {"image": images, "episode_id": [], "frame": []}
    cols.update({name: [bool(v) for v in rng.random(len(images)) < 0.3] for name in BUTTON_COLUMNS})
    cols["j_left"] = [[float(rng.uniform(-1, 1)), 0.0] for _ in images]
    cols["j_right"] = [[0.0, 0.0] for _ in images]
    for episode in range(EPISODES):
        cols["episode_id"] += [episode] * FRAMES
        cols["frame"] += list(range(FRAMES))
    # batch_size: without it `datasets` stats every path-only cell (from the working folder) to size its batches.
    datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image()).to_parquet(str(path), batch_size=1000)
    return path


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


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``paths``: a parquet whose cells hold only a path relative to ``root``, where the frames are;
    ``undecodable``: the same rows as PNG bytes but for row BAD_ROW, bytes that are no image."""
    base = tmp_path_factory.mktemp("image_folder")
    (base / "root" / "frames").mkdir(parents=True)
    rng = np.random.default_rng(2)
    paths, blobs = [], []
    for row in range(EPISODES * FRAMES):
        frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(frame).save(base / "root" / "frames" / f"{row:04d}.png")
        paths.append({"bytes": None, "path": f"frames/{row:04d}.png"})
        blobs.append({"bytes": (base / "root" / "frames" / f"{row:04d}.png").read_bytes(), "path": None})
    blobs[BAD_ROW] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}
    return {
        "root": base / "root",
        "paths": _gameplay(paths, base / "paths.parquet"),
        "undecodable": _gameplay(blobs, base / "undecodable.parquet"),
    }


BAD_ROW = 5  # episode 0, frame 5: the anchor of a window of tiny_ckpt's (1 frame, actions 1..18 ahead)
WINDOWS = EPISODES * (FRAMES - 19 + 1)


def test_prepare_finetune_reads_path_only_cells_inside_the_image_root_only(image_folder, tiny_ckpt) -> None:
    prep = prepare_finetune(image_folder["paths"], tiny_ckpt, eval_fraction=0, image_root=image_folder["root"])
    assert len(prep.dataset) == WINDOWS
    item = prep.dataset[0]
    frame = np.asarray(Image.open(image_folder["root"] / "frames" / f"{item['index']:04d}.png").convert("RGB"))
    torch.testing.assert_close(item["pixels"][-1], to_pixels(resize_frame(frame, 256)[None])[0], rtol=0, atol=0)
    plain = prepare_finetune(image_folder["paths"], tiny_ckpt, eval_fraction=0)
    with pytest.raises(CorruptRowError, match=r"^corrupt row \d+, column 'image': image cell holds only a path"):
        plain.dataset[0]
    with pytest.raises(ValueError, match="not a folder"):
        prepare_finetune(image_folder["paths"], tiny_ckpt, image_root=image_folder["paths"])


def _finetune(*args: str, batch_size: int = 2):
    from typer.testing import CliRunner

    from nitrogen.cli import app

    overrides = ["max_steps=2", f"batch_size={batch_size}", "save_every=0", "progress=false"]
    return CliRunner().invoke(app, ["finetune", *args, "--eval-fraction", "0", *[f"--set={o}" for o in overrides]])


def test_finetune_command_reads_an_image_folder_only_when_told(image_folder, tiny_ckpt, tmp_path) -> None:
    data = ["--data", str(image_folder["paths"]), "--ckpt", str(tiny_ckpt)]
    result = _finetune(*data, "--out", str(tmp_path / "plain"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "error: corrupt row" in result.output and "--image-root" in result.output
    result = _finetune(*data, "--out", str(tmp_path / "rooted"), "--image-root", str(image_folder["root"]))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rooted" / "model.pt").is_file()


@pytest.mark.parametrize("workers", [0, 1])
def test_finetune_command_names_an_undecodable_image_in_one_line(image_folder, tiny_ckpt, tmp_path, workers) -> None:
    args = ["--data", str(image_folder["undecodable"]), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "run")]
    # One batch of every window: the one anchored on the bad row is read in the first step.
    result = _finetune(*args, f"--set=num_workers={workers}", batch_size=WINDOWS)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    (line,) = [line for line in result.output.splitlines() if "corrupt row" in line]
    assert line.startswith(f"error: corrupt row {BAD_ROW}, column 'image': undecodable image")
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ per-row weights


def test_parse_data_spec_reads_a_trailing_weight() -> None:
    from nitrogen.training.run import parse_data_spec

    assert parse_data_spec("runs/r0/data:2.5") == ("runs/r0/data", 2.5)
    assert parse_data_spec("runs/r0/data") == ("runs/r0/data", 1.0)
    assert parse_data_spec("hf://user/set") == ("hf://user/set", 1.0)  # not a number: part of the source
    assert parse_data_spec("C:\\games\\data") == ("C:\\games\\data", 1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        parse_data_spec("runs/r0:-1")


def _labelled(parquet: Path, out: Path, intervention: list[bool], labeller: str) -> Path:
    """The fixture's rows as a labelled recording (DAgger columns added)."""
    import datasets

    data = datasets.load_dataset("parquet", data_files=str(parquet), split="train")
    n = len(data)
    data = data.add_column("driver", ["human" if v else "policy" for v in intervention])
    data = data.add_column("agrees", [True] * n).add_column("intervention", intervention)
    data = data.add_column("labeller", [labeller] * n)
    path = out / f"{labeller}.parquet"
    data.to_parquet(str(path))
    return path


def test_weights_reach_the_action_mask_per_dataset_and_per_intervention_row(
    parquet: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    n = EPISODES * FRAMES
    intervention = [(i % FRAMES) >= FRAMES // 2 for i in range(n)]  # the second half of each episode
    human = _labelled(parquet, tmp_path, intervention, "human")
    prep = prepare_finetune(
        [parquet, human], tiny_ckpt, weights=[2.0, 1.0], intervention_weight=3.0, passive_weight=0.0, eval_fraction=0
    )
    ds = prep.dataset  # a plain and a labelled set mix: the label columns are dropped to concatenate them
    assert len(ds.episode_keys) == 2 * EPISODES
    expected = np.concatenate([np.full(n, 2.0), np.where(intervention, 3.0, 0.0)])
    np.testing.assert_array_equal(ds.row_weights, expected)
    for i in (0, len(ds) - 1):
        _, action_rows = ds.window_rows(i)
        mask = ds[i]["action_mask"]
        assert mask.shape == ds[i]["actions"].shape
        np.testing.assert_array_equal(mask[:, 0].numpy(), expected[action_rows])
        assert (mask == mask[:, :1]).all()  # one weight per action row, over all 25 dims
    # Without weights nothing changes: ones, as before.
    plain = prepare_finetune([parquet], tiny_ckpt, eval_fraction=0)
    assert plain.dataset.row_weights is None and bool((plain.dataset[0]["action_mask"] == 1).all())
    # Scripted labels are real labels: the passive weight leaves them alone.
    scripted = _labelled(parquet, tmp_path, [False] * n, "scripted")
    kept = prepare_finetune([scripted], tiny_ckpt, passive_weight=0.0, eval_fraction=0)
    assert kept.dataset.row_weights is None


def test_two_recordings_of_one_game_stay_separate_episodes(parquet: Path, tiny_ckpt: Path) -> None:
    one = prepare_finetune([parquet], tiny_ckpt, eval_fraction=0)
    two = prepare_finetune([parquet, parquet], tiny_ckpt, eval_fraction=0)
    assert len(two.dataset.episode_keys) == 2 * len(one.dataset.episode_keys)
    assert len(two.dataset) == 2 * len(one.dataset)  # no window spans both copies, none is lost
    n = len(one.dataset)
    for i in (0, n - 1):
        _, actions = two.dataset.window_rows(n + i)
        np.testing.assert_array_equal(actions, one.dataset.window_rows(i)[1] + EPISODES * FRAMES)


def test_a_zero_weight_sample_drops_out_of_the_loss(parquet: Path, tiny_ckpt: Path) -> None:
    from nitrogen.data import collate
    from nitrogen.model.checkpoint import load_model

    prep = prepare_finetune([parquet, parquet], tiny_ckpt, weights=[1.0, 0.0], eval_fraction=0)
    ds, n = prep.dataset, len(prep.dataset) // 2
    model = load_model(tiny_ckpt)[0].eval()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, *ds[0]["actions"].shape, generator=generator)
    t = torch.tensor([0.3, 0.6])

    def loss(items: list[dict], k: int) -> float:
        b = collate(items)
        with torch.no_grad():
            value = model.training_loss(
                b["pixels"], b["frame_valid"], b["actions"], action_mask=b["action_mask"], noise=noise[:k], t=t[:k]
            )
        return float(value)

    alone = loss([ds[0]], 1)
    assert loss([ds[0], ds[n + 5]], 2) == pytest.approx(alone, rel=1e-4)  # the second sample weighs 0
    unweighted = prepare_finetune([parquet, parquet], tiny_ckpt, eval_fraction=0).dataset
    assert loss([unweighted[0], unweighted[n + 5]], 2) != pytest.approx(alone, rel=1e-4)


def test_a_recording_and_an_import_of_the_released_dataset_train_together(
    parquet: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """Different kinds of source mix: the import's string episode ids, its segments and its extra
    columns meet a recording's integer ids and reward/score columns."""
    import datasets

    from nitrogen.data.nitrogen_import import output_features

    features = output_features()
    recorded = datasets.Dataset.from_parquet(str(parquet))
    n = len(recorded)
    imported = {name: recorded[name] for name in ("image", *BUTTON_COLUMNS, "j_left", "j_right", "frame")}
    imported |= {"episode_id": ["vid_chunk_0"] * n, "segment": [0] * (n // 2) + [1] * (n - n // 2)}
    imported |= {"game": ["gamma"] * n, "video_id": ["vid"] * n, "chunk_id": [0] * n, "time_s": [0.0] * n}
    imported_path = tmp_path / "imported.parquet"
    datasets.Dataset.from_dict(imported, features=features).to_parquet(str(imported_path))
    with_reward = recorded.add_column("reward", [0.0] * n).add_column("score", [0.0] * n)
    recorded_path = tmp_path / "recorded.parquet"
    with_reward.to_parquet(str(recorded_path))

    alone = prepare_finetune([recorded_path], tiny_ckpt, eval_fraction=0).dataset
    mixed = prepare_finetune([recorded_path, imported_path], tiny_ckpt, eval_fraction=0).dataset
    assert len(mixed.episode_keys) == len(alone.episode_keys) + 1  # the import's one chunk is one episode
    # The import's two segments are cut apart: no window spans the boundary at row n // 2.
    windows = [mixed.window_rows(i)[1] for i in range(len(alone), len(mixed))]
    assert windows and all(((rows - n) < n // 2).all() or ((rows - n) >= n // 2).all() for rows in windows)
    assert len(mixed) > len(alone)
