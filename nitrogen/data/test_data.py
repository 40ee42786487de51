"""Tests of nitrogen.data on a real parquet dataset of Atari Breakout frames (no mocks)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nitrogen.actions import ACTION_DIM, BUTTON_INDEX, NUM_BUTTONS
from nitrogen.data import (
    BUTTON_COLUMNS,
    MAPPING_PRESETS,
    ActionMapper,
    CorruptRowError,
    GameplayDataset,
    MappingConfig,
    load_gameplay,
    load_gameplays,
    load_mapping,
    measure_throughput,
    split_by_episode,
    table_to_actions,
)
from nitrogen.inference.preprocessing import resize_frame, to_pixels

EP_LENGTHS = (32, 28)  # episode 0 in row order, episode 1 stored with its frames reversed
N = sum(EP_LENGTHS)
BAD_IMAGE_ROW = 7  # episode 0, frame 7
BAD_STICK_ROW = 34  # episode 1, frame 25


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def atari_frames() -> list[np.ndarray]:
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        rng = np.random.default_rng(0)
        frames = [obs]
        while len(frames) < N:
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            frames.append(obs)
            if terminated or truncated:
                obs, _ = env.reset()
    finally:
        env.close()
    return [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]


def _columns(frames: list[np.ndarray]) -> dict[str, list[Any]]:
    rng = np.random.default_rng(1)
    cols: dict[str, list[Any]] = {"image": [], "episode_id": [], "frame": []}
    cols.update({name: [] for name in BUTTON_COLUMNS})
    cols["j_left"], cols["j_right"] = [], []
    row = 0
    for ep, length in enumerate(EP_LENGTHS):
        frame_numbers = range(length) if ep == 0 else reversed(range(length))
        for f in frame_numbers:
            cols["image"].append({"bytes": _png(frames[row]), "path": None})
            cols["episode_id"].append(f"episode-{ep}")
            cols["frame"].append(f)
            for name in BUTTON_COLUMNS:
                cols[name].append(bool(rng.random() < 0.3))
            cols["j_left"].append(rng.uniform(-1, 1, 2).round(3).tolist())
            cols["j_right"].append(rng.uniform(-1, 1, 2).round(3).tolist())
            row += 1
    # Rows with hand-checked values.
    for name in BUTTON_COLUMNS:
        cols[name][3] = name in ("south", "dpad_left", "right_trigger")
    cols["j_left"][3] = [0.05, -0.3]
    cols["j_right"][3] = [0.7, -0.8]
    for name in BUTTON_COLUMNS:
        cols[name][4] = False
    cols["j_left"][4] = [-1.0, 1.0]
    cols["j_right"][4] = [-0.6, 0.5]
    return cols


def _to_hf(cols: dict[str, list[Any]]):
    import datasets

    return datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, atari_frames: list[np.ndarray]) -> Path:
    root = tmp_path_factory.mktemp("gameplay")
    cols = _columns(atari_frames)
    ds = _to_hf(cols)
    ds.to_parquet(str(root / "clean.parquet"))
    ds.save_to_disk(str(root / "saved"))
    (root / "shards").mkdir()
    ds.select(range(EP_LENGTHS[0])).to_parquet(str(root / "shards" / "part-000.parquet"))
    ds.select(range(EP_LENGTHS[0], N)).to_parquet(str(root / "shards" / "part-001.parquet"))
    bad = {k: list(v) for k, v in cols.items()}
    bad["image"][BAD_IMAGE_ROW] = {"bytes": b"\x89PNG not really an image", "path": None}
    bad["j_left"][BAD_STICK_ROW] = [0.1, 0.2, 0.3]
    _to_hf(bad).to_parquet(str(root / "corrupt.parquet"))
    return root


@pytest.fixture(scope="module")
def clean(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_gameplay(data_dir / "clean.parquet", cache_dir=str(tmp_path_factory.mktemp("hf")))


def _decoded(ds, row: int) -> np.ndarray:
    return np.asarray(
        Image.open(io.BytesIO(ds.cast_column("image", _raw_image())[row]["image"]["bytes"])).convert("RGB")
    )


def _raw_image():
    import datasets

    return datasets.Image(decode=False)


# ------------------------------------------------------------------------------------ mapping
def test_mapping_matches_hand_computed_vectors(clean):
    mapper = ActionMapper(MappingConfig(deadzone=0.1, virtual_threshold=0.5))
    row3 = clean[3]
    expected = np.zeros(ACTION_DIM, dtype=np.float32)
    for name in ("SOUTH", "DPAD_LEFT", "RIGHT_TRIGGER"):
        expected[BUTTON_INDEX[name]] = 1
    expected[BUTTON_INDEX["RIGHT_UP"]] = 1  # y = -0.8 < -0.5: up, since +y points down
    expected[BUTTON_INDEX["RIGHT_RIGHT"]] = 1  # x = 0.7 > 0.5
    expected[NUM_BUTTONS:] = [(0 + 1) / 2, (-0.3 + 1) / 2, (0.7 + 1) / 2, (-0.8 + 1) / 2]  # 0.05 -> deadzone
    np.testing.assert_allclose(mapper.row_to_action(row3), expected, atol=1e-6)

    row4 = clean[4]
    expected = np.zeros(ACTION_DIM, dtype=np.float32)
    expected[BUTTON_INDEX["RIGHT_LEFT"]] = 1  # x = -0.6
    # y = 0.5 is not > 0.5: RIGHT_BOTTOM stays released (strict comparison)
    expected[NUM_BUTTONS:] = [0.0, 1.0, 0.2, 0.75]
    np.testing.assert_allclose(mapper.row_to_action(row4), expected, atol=1e-6)

    cols = clean.remove_columns("image")[:]
    table = ActionMapper(MappingConfig(deadzone=0.1)).table_to_actions(cols)
    assert table.shape == (N, ACTION_DIM) and table.dtype == np.float32
    np.testing.assert_allclose(table[3], mapper.row_to_action(row3))
    np.testing.assert_allclose(table[10], mapper.row_to_action(clean[10]))
    np.testing.assert_allclose(table_to_actions(cols)[10], ActionMapper().row_to_action(clean[10]))


def test_mapping_config_validation_and_file_loading(tmp_path: Path):
    with pytest.raises(ValueError, match="virtual"):
        MappingConfig(buttons={"RIGHT_UP": "x"})
    with pytest.raises(ValueError, match="unknown button"):
        MappingConfig(buttons={"TURBO": "x"})
    assert MappingConfig().buttons["DPAD_UP"] == "dpad_up"
    (tmp_path / "m.json").write_text(json.dumps({"preset": "snes", "deadzone": 0.2}))
    cfg = load_mapping(tmp_path / "m.json")
    assert cfg.buttons["NORTH"] == "x" and cfg.deadzone == 0.2 and cfg.j_left is None
    (tmp_path / "m.yaml").write_text("buttons:\n  SOUTH: fire\nj_right: null\n")
    cfg = load_mapping(tmp_path / "m.yaml")
    assert cfg.buttons["SOUTH"] == "fire" and cfg.buttons["EAST"] is None and cfg.j_right is None


def test_nes_preset_loads_without_code_changes(atari_frames, tmp_path: Path):
    rng = np.random.default_rng(2)
    n = 24
    nes_cols = ["a", "b", "select", "start", "up", "down", "left", "right"]
    cols: dict[str, Any] = {"image": [{"bytes": _png(atari_frames[i]), "path": None} for i in range(n)]}
    cols.update({c: [bool(v) for v in rng.random(n) < 0.5] for c in nes_cols})
    _to_hf(cols).to_parquet(str(tmp_path / "nes.parquet"))
    (tmp_path / "nes.json").write_text(json.dumps({"preset": "nes"}))
    hf = load_gameplay(tmp_path / "nes.parquet", cache_dir=str(tmp_path / "hf"))
    ds = GameplayDataset(hf, mapping=load_mapping(tmp_path / "nes.json"), action_shift=3, action_horizon=18)
    assert ds.mapper.missing_columns == []
    assert len(ds) == n - 21 + 1
    item = ds[0]
    for k, row in enumerate(range(3, 21)):
        want = np.zeros(ACTION_DIM, dtype=np.float32)
        for col, name in zip(
            nes_cols,
            ["SOUTH", "EAST", "BACK", "START", "DPAD_UP", "DPAD_DOWN", "DPAD_LEFT", "DPAD_RIGHT"],
            strict=True,
        ):
            want[BUTTON_INDEX[name]] = cols[col][row]
        want[NUM_BUTTONS:] = 0.5
        np.testing.assert_array_equal(item["actions"][k].numpy(), want)
    assert MAPPING_PRESETS["atari"].buttons["SOUTH"] == "fire"


def test_missing_columns_are_reported_once(clean, caplog):
    partial = clean.remove_columns(["guide", "j_right"])
    with caplog.at_level(logging.WARNING, logger="nitrogen.data"):
        ds = GameplayDataset(partial, action_shift=3, action_horizon=18)
        for i in range(3):
            ds[i]
        ds.mapper.row_to_action(partial.remove_columns("image")[0])
    warnings = [r for r in caplog.records if "missing" in r.getMessage()]
    assert len(warnings) == 1
    assert "guide" in warnings[0].getMessage() and "j_right" in warnings[0].getMessage()
    assert ds.mapper.missing_columns == ["guide", "j_right"]
    assert (ds.row_actions[:, BUTTON_INDEX["GUIDE"]] == 0).all()
    assert (ds.row_actions[:, NUM_BUTTONS + 2 :] == 0.5).all()


# ------------------------------------------------------------------------------------ windows
def test_windows_respect_shift_horizon_and_episodes(clean):
    ds = GameplayDataset(clean, action_shift=3, action_horizon=18)
    assert len(ds) == (32 - 21 + 1) + (28 - 21 + 1)
    episode = np.asarray(clean["episode_id"])
    frame = np.asarray(clean["frame"])
    anchors = set()
    for i in range(len(ds)):
        frame_rows, action_rows = ds.window_rows(i)
        t_row = int(frame_rows[-1])
        assert len(action_rows) == 18
        assert (episode[action_rows] == episode[t_row]).all()  # never crosses an episode
        np.testing.assert_array_equal(frame[action_rows], frame[t_row] + 3 + np.arange(18))
        item = ds[i]
        assert item["index"] == t_row
        np.testing.assert_array_equal(item["actions"].numpy(), ds.row_actions[action_rows])
        anchors.add((episode[t_row], int(frame[t_row])))
    assert anchors == {("episode-0", t) for t in range(12)} | {("episode-1", t) for t in range(8)}
    # Episode 1 is stored reversed: frame 0 is its last row.
    assert ds.window_rows(12)[0][-1] == N - 1


def test_context_frames_before_episode_start_are_invalid(clean):
    ds = GameplayDataset(clean, context_length=2, frame_spacing=4, action_shift=3, action_horizon=18)
    episode = np.asarray(clean["episode_id"])
    frame = np.asarray(clean["frame"])
    for i in range(len(ds)):
        frame_rows, _ = ds.window_rows(i)
        item = ds[i]
        t = int(frame[frame_rows[-1]])
        assert item["frame_valid"].tolist() == [t >= 4, True]
        if t >= 4:
            assert episode[frame_rows[0]] == episode[frame_rows[1]] and frame[frame_rows[0]] == t - 4
        else:
            assert frame_rows[0] == -1 and (item["pixels"][0] == -1).all()


def test_pixels_equal_play_time_preprocessing(clean, atari_frames):
    ds = GameplayDataset(clean, action_shift=3, action_horizon=18)
    item = ds[5]
    assert item["pixels"].shape == (1, 3, 256, 256) and item["pixels"].dtype == torch.float32
    decoded = _decoded(clean, item["index"])
    np.testing.assert_array_equal(decoded, atari_frames[item["index"]])
    torch.testing.assert_close(item["pixels"][0], to_pixels(resize_frame(decoded, 256)[None])[0], rtol=0, atol=0)
    assert item["action_mask"].shape == (18, 25) and (item["action_mask"] == 1).all()
    assert item["frame_valid"].dtype == torch.bool

    masked = GameplayDataset(clean, action_shift=3, action_horizon=18, mask_rect=(10, 20, 50, 40))[5]
    blacked = decoded.copy()
    blacked[20:60, 10:60] = 0
    torch.testing.assert_close(masked["pixels"][0], to_pixels(resize_frame(blacked, 256)[None])[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------ corrupt rows
def test_corrupt_rows_raise_with_the_row_index(data_dir, tmp_path):
    bad = load_gameplay(data_dir / "corrupt.parquet", cache_dir=str(tmp_path / "hf"))
    with pytest.raises(CorruptRowError, match=rf"row {BAD_STICK_ROW}\b") as info:
        GameplayDataset(bad, action_shift=3, action_horizon=18)
    assert info.value.row_index == BAD_STICK_ROW and info.value.column == "j_left"
    assert "2 values" in info.value.reason

    no_sticks = GameplayDataset(bad, mapping=MappingConfig(j_left=None), action_shift=3, action_horizon=18)
    with pytest.raises(CorruptRowError, match=rf"row {BAD_IMAGE_ROW}\b") as info:
        no_sticks[BAD_IMAGE_ROW]  # window 7 is anchored at episode 0, frame 7 = row 7
    assert info.value.row_index == BAD_IMAGE_ROW and info.value.column == "image"


def test_skip_bad_counts_and_substitutes_the_next_valid_window(data_dir, tmp_path):
    bad = load_gameplay(data_dir / "corrupt.parquet", cache_dir=str(tmp_path / "hf"))
    ds = GameplayDataset(bad, action_shift=3, action_horizon=18, skip_bad=True)
    assert set(ds.bad_rows) == {BAD_STICK_ROW}  # action cells are all checked up front
    anchors = []
    for i in range(len(ds)):
        item = ds[i]
        frame_rows, action_rows = ds.window_rows(i)
        anchors.append(item["index"])
        touches = BAD_IMAGE_ROW in frame_rows or BAD_STICK_ROW in action_rows
        if touches:
            assert item["index"] != frame_rows[-1]  # substituted, and visibly so
        else:
            assert item["index"] == frame_rows[-1]
        assert item["index"] != BAD_IMAGE_ROW
    assert set(ds.bad_rows) == {BAD_IMAGE_ROW, BAD_STICK_ROW}
    assert anchors[BAD_IMAGE_ROW] == BAD_IMAGE_ROW + 1  # the next window
    # Episode 1 (windows 12..19, frames 0..7): frame 25's action is used by anchors 5..7, which
    # wrap around to window 0 (row 0).
    assert anchors[12 + 5 : 12 + 8] == [0, 0, 0]


# ------------------------------------------------------------------------------------ cache
class CountingDataset(GameplayDataset):
    decodes = 0

    def decode_image(self, value: Any, row_index: int) -> np.ndarray:
        type(self).decodes += 1
        return super().decode_image(value, row_index)


def test_cache_gives_identical_items_and_is_reused(data_dir, clean, tmp_path):
    plain = GameplayDataset(clean, context_length=2, frame_spacing=4, action_shift=3, action_horizon=18)
    CountingDataset.decodes = 0
    first = CountingDataset(
        clean, context_length=2, frame_spacing=4, cache_dir=tmp_path / "c", action_shift=3, action_horizon=18
    )
    assert CountingDataset.decodes == N and not first.cache_reused
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len([f for f in files if f.endswith(".npy")]) == 1

    again = load_gameplay(data_dir / "clean.parquet", cache_dir=str(tmp_path / "hf"))  # a fresh HF object
    CountingDataset.decodes = 0
    second = CountingDataset(
        again, context_length=2, frame_spacing=4, cache_dir=tmp_path / "c", action_shift=3, action_horizon=18
    )
    assert second.cache_reused
    for i in range(len(plain)):
        a, b, c = plain[i], first[i], second[i]
        for key in ("pixels", "frame_valid", "actions", "action_mask"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
            torch.testing.assert_close(a[key], c[key], rtol=0, atol=0)
        assert a["index"] == b["index"] == c["index"]
    assert CountingDataset.decodes == 0  # the second dataset never decoded an image
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == files

    CountingDataset(clean, cache_dir=tmp_path / "c", mask_rect=(0, 0, 8, 8))  # another key, another file
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2


def test_cache_with_workers(clean, tmp_path):
    ds = GameplayDataset(clean, cache_dir=tmp_path / "c", action_shift=3, action_horizon=18)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    indices = torch.cat([b["index"] for b in loader]).tolist()
    assert indices == [ds[i]["index"] for i in range(len(ds))]


# ------------------------------------------------------------------------------------ loading, splits, batches
def test_load_from_parquet_file_disk_folder_and_parquet_folder(data_dir, tmp_path):
    hf = str(tmp_path / "hf")
    from_file = load_gameplay(data_dir / "clean.parquet", cache_dir=hf)
    from_disk = load_gameplay(data_dir / "saved")
    from_folder = load_gameplay(data_dir / "shards", cache_dir=hf)
    from_list = load_gameplay(sorted((data_dir / "shards").glob("*.parquet")), cache_dir=hf)
    for hf_ds in (from_file, from_disk, from_folder, from_list):
        assert len(hf_ds) == N
        ds = GameplayDataset(hf_ds, action_shift=3, action_horizon=18)
        assert len(ds) == 20
        assert ds[13]["index"] == GameplayDataset(from_file, action_shift=3, action_horizon=18)[13]["index"]
    torch.testing.assert_close(GameplayDataset(from_disk)[0]["pixels"], GameplayDataset(from_folder)[0]["pixels"])


def test_split_by_episode_is_disjoint(clean):
    ds = GameplayDataset(clean, action_shift=3, action_horizon=18)
    train, eval_ = split_by_episode(ds, eval_fraction=0.3, seed=0)
    assert train and eval_ and sorted(train + eval_) == list(range(len(ds)))
    episode = np.asarray(clean["episode_id"])
    train_eps = {episode[ds.window_rows(i)[0][-1]] for i in train}
    eval_eps = {episode[ds.window_rows(i)[0][-1]] for i in eval_}
    assert train_eps.isdisjoint(eval_eps)
    assert split_by_episode(ds, 0.3, seed=0) == (train, eval_)


def test_default_collate_batches_feed_training_loss(clean, tiny_ckpt):
    from nitrogen.model.checkpoint import load_model

    model, _ = load_model(tiny_ckpt)
    ds = GameplayDataset(clean, context_length=2, frame_spacing=4, action_shift=3, action_horizon=18)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["pixels"].shape == (3, 2, 3, 256, 256) and batch["frame_valid"].shape == (3, 2)
    assert batch["actions"].shape == (3, 18, 25) and batch["index"].tolist() == [0, 1, 2]
    with torch.no_grad():
        loss = model.training_loss(
            batch["pixels"], batch["frame_valid"], batch["actions"], action_mask=batch["action_mask"]
        )
    assert torch.isfinite(loss)


def test_measure_throughput(clean):
    ds = GameplayDataset(clean, action_shift=3, action_horizon=18)
    assert measure_throughput(ds, batch_size=4, num_workers=0, batches=3) > 0


def test_several_recordings_share_episode_numbers_when_games_differ(clean, tmp_path):
    # Two "games" recorded with the same episode ids, loaded as one dataset: episodes stay apart.
    first = clean.add_column("game", ["ale:Breakout"] * N)
    second = clean.add_column("game", ["ale:Pong"] * N)
    first.to_parquet(str(tmp_path / "a.parquet"))
    second.to_parquet(str(tmp_path / "b.parquet"))
    both = load_gameplays([tmp_path / "a.parquet", tmp_path / "b.parquet"], cache_dir=str(tmp_path / "hf"))
    assert len(both) == 2 * N
    ds = GameplayDataset(both, action_shift=3, action_horizon=18)
    single = GameplayDataset(clean, action_shift=3, action_horizon=18)
    assert len(ds) == 2 * len(single)  # as if concatenated with fresh episode ids
    assert len(set(ds.episode_keys)) == 4
    games = np.asarray(both["game"])
    for i in range(len(ds)):
        frame_rows, action_rows = ds.window_rows(i)
        assert len(set(games[action_rows])) == 1 and games[frame_rows[-1]] == games[action_rows[0]]
        assert ds.window_game(i) == games[action_rows[0]]
    assert single.window_game(0) is None
    # Without episode ids each game is one episode: no window mixes the two recordings.
    no_ids = GameplayDataset(both.remove_columns("episode_id"), action_shift=3, action_horizon=18)
    assert no_ids.episode_keys == [("ale:Breakout", 0), ("ale:Pong", 0)]
    for i in range(len(no_ids)):
        frame_rows, action_rows = no_ids.window_rows(i)
        assert len(set(games[np.concatenate([frame_rows, action_rows])])) == 1
    with pytest.raises(ValueError, match="columns"):
        load_gameplays([tmp_path / "a.parquet", load_gameplay(tmp_path / "a.parquet").remove_columns("game")])


# ------------------------------------------------------------------------------------ game ids, frame size
GAMES = {"": 0, "ale:Breakout": 1, "ale:Pong": 2, "ale:Freeway": 3}


def _warnings(caplog) -> list[str]:
    mine = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "nitrogen.data.dataset"]
    return [r.getMessage() for r in mine]


def test_items_carry_the_game_ids_of_the_checkpoint_mapping(clean, caplog):
    both = clean.add_column("game", ["ale:Breakout"] * EP_LENGTHS[0] + ["ale:Pong"] * EP_LENGTHS[1])
    with caplog.at_level(logging.WARNING):
        ds = GameplayDataset(both, action_shift=3, action_horizon=18, game_mapping=GAMES)
    assert _warnings(caplog) == []
    ids = [int(ds[i]["game_ids"]) for i in range(len(ds))]
    assert ids == [GAMES[ds.window_game(i)] for i in range(len(ds))] and set(ids) == {1, 2}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["game_ids"].dtype == torch.long and batch["game_ids"].shape == (3,)
    assert "game_ids" not in GameplayDataset(both, action_shift=3, action_horizon=18)[0]  # no mapping, no ids


def test_unknown_games_get_the_unconditional_id_with_one_warning(clean, caplog):
    names = ["ale:Breakout"] * EP_LENGTHS[0] + ["ale:Tetris"] * EP_LENGTHS[1]
    with caplog.at_level(logging.WARNING):
        ds = GameplayDataset(clean.add_column("game", names), action_shift=3, action_horizon=18, game_mapping=GAMES)
        ids = {ds.window_game(i): int(ds[i]["game_ids"]) for i in range(len(ds))}
    assert ids == {"ale:Breakout": 1, "ale:Tetris": 0}
    (message,) = _warnings(caplog)
    assert message.startswith("games ['ale:Tetris'] are not in the checkpoint's game mapping")
    with pytest.raises(ValueError, match="ale:Tetris"):  # no "" entry to give them
        GameplayDataset(clean.add_column("game", names), game_mapping={"ale:Breakout": 0, "ale:Pong": 1})


def test_without_a_game_column_every_window_is_unconditional_with_one_warning(clean, caplog):
    with caplog.at_level(logging.WARNING):
        ds = GameplayDataset(clean, action_shift=3, action_horizon=18, game_mapping=GAMES)
        ids = {int(ds[i]["game_ids"]) for i in range(len(ds))}
    assert ids == {0}
    (message,) = _warnings(caplog)
    assert "'game'" in message and "not trained" in message


def test_window_config_from_checkpoint_takes_the_tower_frame_size(clean, tiny_ckpt, tiny_ckpt_224, tmp_path):
    from nitrogen.data import WindowConfig
    from nitrogen.model.checkpoint import read_checkpoint

    raw = read_checkpoint(tiny_ckpt_224)
    window = WindowConfig.from_checkpoint(raw, context_length=2)
    modality = raw.config.modality_cfg
    assert (window.image_size, window.context_length) == (224, 2)
    assert (window.frame_spacing, window.action_shift) == (modality.frame_spacing, modality.action_shift)
    assert window.action_horizon == raw.config.model_cfg.action_horizon
    assert WindowConfig.from_checkpoint(read_checkpoint(tiny_ckpt)).image_size == 256
    ds = GameplayDataset(clean, window, cache_dir=tmp_path / "c")
    item = ds[0]
    assert item["pixels"].shape == (2, 3, 224, 224)
    decoded = _decoded(clean, int(item["index"]))
    torch.testing.assert_close(item["pixels"][1], to_pixels(resize_frame(decoded, 224)[None])[0], rtol=0, atol=0)
    # The cache holds 224-pixel frames and nothing half-written: no temporary file is left.
    (cache,) = (tmp_path / "c").glob("*.npy")
    assert np.load(cache, mmap_mode="r").shape == (N, 224, 224, 3)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".npy"]


def test_a_failed_cache_build_leaves_no_cache(data_dir, tmp_path):
    corrupt = load_gameplay(data_dir / "corrupt.parquet", cache_dir=str(tmp_path / "hf"))
    with pytest.raises(CorruptRowError, match=f"corrupt row {BAD_IMAGE_ROW}"):
        GameplayDataset(corrupt, cache_dir=tmp_path / "c", mapping=MappingConfig(j_left=None))
    assert list((tmp_path / "c").iterdir()) == []
