"""`nitrogen data import-nitrogen` on a small release built here in the released layout, with real
H.264 videos (PyAV) whose frames carry their own frame number in large blocks."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nitrogen.data import BUTTON_COLUMNS, GameplayDataset, load_gameplay
from nitrogen.data.nitrogen_import import (
    ChunkMetadata,
    ImportConfig,
    drop_idle_runs,
    frame_geometry,
    import_nitrogen,
)
from nitrogen.gamepad import pack_pad

runner = CliRunner()

W, H = 160, 120  # the videos' real size
AREA = {"xtl": 0.1, "ytl": 0.0, "xbr": 0.9, "ybr": 1.0}  # x 16..144: the 4x3 grid of number cells
OVERLAY = (116, 90, 24, 20)  # x, y, w, h inside cell 11, painted magenta
MAGENTA, GREEN = (255, 0, 255), (0, 200, 0)
SHARD = "SHARD_0000"


def draw(n: int) -> np.ndarray:
    """Frame ``n``: bits of n in cells 0..10 (white/black), cell 11 grey, green outside the game area."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :16] = GREEN
    rgb[:, 144:] = GREEN
    for cell in range(12):
        r, c = divmod(cell, 4)
        x0, y0 = 16 + 32 * c, 40 * r
        value = 128 if cell == 11 else (255 if (n >> cell) & 1 else 0)
        rgb[y0 : y0 + 40, x0 : x0 + 32] = value
    x, y, w, h = OVERLAY
    rgb[y : y + h, x : x + w] = MAGENTA
    return rgb


def read_number(img: np.ndarray, cropped: bool) -> int:
    """The frame number an output frame (256x256) shows."""
    n = 0
    for cell in range(11):
        r, c = divmod(cell, 4)
        sx, sy = 16 + 32 * c + 16, 40 * r + 20
        ox = (sx - 16) * 256 / 128 if cropped else sx * 256 / W
        oy = sy * 256 / H
        patch = img[int(oy) - 3 : int(oy) + 3, int(ox) - 3 : int(ox) + 3]
        n |= int(patch.mean() > 128) << cell
    return n


def encode(path: Path, fps: int, frames: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10", "preset": "ultrafast", "g": "24"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for n in range(frames):
            frame = av.VideoFrame.from_ndarray(draw(n), format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def labels(n: int, seed: int, idle: list[tuple[int, int]] = ()) -> dict[str, list]:
    """Label columns of ``n`` rows: random presses and sticks, all-neutral inside the ``idle`` ranges."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {name: [] for name in BUTTON_COLUMNS}
    cols["j_left"], cols["j_right"] = [], []
    for i in range(n):
        quiet = any(a <= i < b for a, b in idle)
        pressed = rng.random(len(BUTTON_COLUMNS)) < 0.3
        pressed[0] = True  # south: never idle outside the idle ranges
        for name, on in zip(BUTTON_COLUMNS, pressed, strict=True):
            cols[name].append(bool(on) and not quiet)
        for stick in ("j_left", "j_right"):
            cols[stick].append([0.0, 0.0] if quiet else rng.uniform(-1, 1, 2).round(3).tolist())
    return cols


def write_chunk(root: Path, video: str, k: int, meta: dict, cols: dict | None, raw: bytes | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / SHARD / video / f"{video}_chunk_{k:04d}"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(meta))
    if raw is not None:
        (folder / "actions_raw.parquet").write_bytes(raw)
    else:
        pq.write_table(pa.table(cols), folder / "actions_raw.parquet")


def metadata(video: str, k: int, start: float, rows: int, resolution=(H, W), box=True, overlay=OVERLAY) -> dict:
    meta = {
        "uuid": f"{video}-{k}",
        "chunk_id": k,
        "chunk_size": rows,
        "original_video": {
            "resolution": list(resolution),
            "video_id": video,
            "start_time": start,
            "end_time": start + rows / 60,
            "duration": rows / 60,
            "start_frame": int(start * 60),
            "end_frame": int(start * 60) + rows,
            "source": "test",
            "url": "https://example.invalid",
        },
        "game": "Alpha" if video == "vidA" else "Beta",
        "controller_type": "xbox",
        "bbox_controller_overlay": list(overlay),
    }
    if box:
        meta["bbox_game_area"] = AREA
    return meta


CHUNKS = {  # key -> (fps of its video, start, rows, has a game-area box)
    f"{SHARD}/vidA/vidA_chunk_0000": (60, 0.0, 40, True),
    f"{SHARD}/vidA/vidA_chunk_0001": (60, 1.0, 100, False),
    f"{SHARD}/vidB/vidB_chunk_0000": (30, 0.51, 40, True),
}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release")
    actions, videos = root / "actions", root / "videos"
    videos.mkdir()
    encode(videos / "vidA.mp4", 60, 180)  # 3 s
    encode(videos / "vidB.mkv", 30, 90)  # 3 s at 30 fps
    data = (videos / "vidA.mp4").read_bytes()
    (videos / "vidC.mp4").write_bytes(data[: len(data) * 2 // 5])  # truncated download
    write_chunk(actions, "vidA", 0, metadata("vidA", 0, 0.0, 40), labels(40, 0))
    # idle rows 40..69 (a run of 30: dropped at idle_min_run=20) and 10..14 (a run of 5: kept)
    write_chunk(actions, "vidA", 1, metadata("vidA", 1, 1.0, 100, box=False), labels(100, 1, [(10, 15), (40, 70)]))
    write_chunk(actions, "vidA", 2, metadata("vidA", 2, 2.8, 40), labels(40, 2))  # runs past the video's end
    write_chunk(actions, "vidA", 3, metadata("vidA", 3, 0.0, 40), None, raw=b"not a parquet file")
    # vidB's metadata is at twice the real size: the overlay box is scaled down to the real frame
    big = (2 * OVERLAY[0], 2 * OVERLAY[1], 2 * OVERLAY[2], 2 * OVERLAY[3])
    write_chunk(actions, "vidB", 0, metadata("vidB", 0, 0.51, 40, (2 * H, 2 * W), overlay=big), labels(40, 3))
    write_chunk(actions, "vidB", 1, metadata("vidB", 1, 1.0, 40, (H, H)), labels(40, 4))  # other aspect ratio
    write_chunk(actions, "vidC", 0, metadata("vidC", 0, 0.0, 40), labels(40, 5))
    write_chunk(actions, "vidMissing", 0, metadata("vidMissing", 0, 0.0, 40), labels(40, 6))
    tarball = root / f"{SHARD}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(actions / SHARD, arcname=SHARD)
    return {"actions": actions, "videos": videos, "tarball": tarball, "root": root}


def run_import(release, out: Path, source: Path | None = None, **settings) -> dict:
    cfg = ImportConfig(actions=source or release["actions"], videos=release["videos"], out=out, **settings)
    return import_nitrogen(cfg)


def rows_by_key(out: Path) -> dict[tuple[str, int], dict]:
    data = load_gameplay(out)
    return {(r["episode_id"], r["frame"]): r for r in data.cast_column("image", _no_decode()).to_list()}


def _no_decode():
    import datasets

    return datasets.Image(decode=False)


def _png(cell: dict) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("imported") / "out"
    report = run_import(release, out)
    return {"out": out, "report": report, "rows": rows_by_key(out)}


def source_labels(release, key: str) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(release["actions"] / key / "actions_raw.parquet").to_pydict()


def test_every_row_holds_the_frame_shown_at_its_time_at_60_and_30_fps(imported):
    rows = imported["rows"]
    for key, (fps, start, n, box) in CHUNKS.items():
        video, chunk = key.split("/")[1], int(key[-4:])
        for i in range(n):
            row = rows[(f"{video}/{chunk}", i)]
            assert row["time_s"] == pytest.approx(start + i / 60)
            expected = int(np.floor((start + i / 60) * fps + 1e-6))
            img = _png(row["image"])
            assert img.shape == (256, 256, 3)
            assert read_number(img, cropped=box) == expected, (key, i)


def test_the_overlay_is_masked_and_the_game_area_cropped(imported):
    rows = imported["rows"]
    for episode, cropped in (("vidA/0", True), ("vidB/0", True), ("vidA/1", False)):
        img = _png(rows[(episode, 0)]["image"]).astype(int)
        magenta = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] > 120)
        assert not magenta.any(), episode
        x, y, w, h = OVERLAY
        sx = (lambda v: (v - 16) * 2) if cropped else (lambda v: v * 256 / W)
        sy = lambda v: v * 256 / H
        inner = img[int(sy(y)) + 3 : int(sy(y + h)) - 3, int(sx(x)) + 3 : int(sx(x + w)) - 3]
        assert inner.size and (inner == 0).all(), episode  # painted black, not just darker
        green = (img[..., 1] > 150) & (img[..., 0] < 80) & (img[..., 2] < 80)
        assert green.any() != cropped, episode  # the bands outside the game area are gone when cropped


def test_actions_equal_the_labels_and_go_through_the_pad_codec(release, imported):
    out = imported["out"]
    ds = GameplayDataset(load_gameplay(out), action_shift=0, action_horizon=1, image_size=256)
    data = load_gameplay(out).select_columns(["episode_id", "frame"]).to_dict()
    index = {(e, f): r for r, (e, f) in enumerate(zip(data["episode_id"], data["frame"], strict=True))}
    for key, (_, _, n, _) in CHUNKS.items():
        src = source_labels(release, key)
        video, chunk = key.split("/")[1], int(key[-4:])
        rows = imported["rows"]
        for i in range(n):
            row = rows[(f"{video}/{chunk}", i)]
            assert [row[c] for c in BUTTON_COLUMNS] == [src[c][i] for c in BUTTON_COLUMNS]
            np.testing.assert_allclose(row["j_left"], src["j_left"][i], atol=1e-6)
            np.testing.assert_allclose(row["j_right"], src["j_right"][i], atol=1e-6)
        pressed = np.asarray([src[c] for c in BUTTON_COLUMNS]).T
        packed = pack_pad(pressed, np.asarray(src["j_left"]), np.asarray(src["j_right"]))
        got = ds.row_actions[[index[(f"{video}/{chunk}", i)] for i in range(n)]]
        np.testing.assert_allclose(got, packed, atol=1e-6)


def test_bad_chunks_are_named_with_their_reason_and_skipped(imported):
    report = imported["report"]
    skipped = report["skipped"]
    assert set(skipped) == {
        f"{SHARD}/vidA/vidA_chunk_0002",
        f"{SHARD}/vidA/vidA_chunk_0003",
        f"{SHARD}/vidB/vidB_chunk_0001",
        f"{SHARD}/vidC/vidC_chunk_0000",
        f"{SHARD}/vidMissing/vidMissing_chunk_0000",
    }
    assert "too short" in skipped[f"{SHARD}/vidA/vidA_chunk_0002"]
    assert "unreadable labels" in skipped[f"{SHARD}/vidA/vidA_chunk_0003"]
    assert "aspect ratio" in skipped[f"{SHARD}/vidB/vidB_chunk_0001"]
    assert "vidC" in skipped[f"{SHARD}/vidC/vidC_chunk_0000"]  # the truncated download
    assert "missing" in skipped[f"{SHARD}/vidMissing/vidMissing_chunk_0000"]
    assert report["complete"] and report["chunks_imported"] == 3 and report["chunks_skipped"] == 5
    assert report["rows_written"] == 180 and report["rows_read"] == 180
    assert report["games"] == {"Alpha": {"chunks": 2, "rows": 140}, "Beta": {"chunks": 1, "rows": 40}}
    assert report["idle_rows"] == 35 and report["idle_share"] == pytest.approx(35 / 180)
    assert report["this_run"]["decode_frames_per_s_per_worker"] > 0
    on_disk = json.loads((imported["out"] / "import.json").read_text())
    assert on_disk["skipped"] == skipped and on_disk["complete"] is True


def test_drop_idle_removes_the_long_idle_run_and_no_window_crosses_it(release, tmp_path):
    out = tmp_path / "out"
    report = run_import(release, out, drop_idle=True, idle_min_run=20)
    assert report["rows_dropped_idle"] == 30 and report["rows_written"] == 150
    rows = rows_by_key(out)
    frames = sorted(f for (e, f) in rows if e == "vidA/1")
    assert frames == [*range(40), *range(70, 100)]  # the 30-row run went, the 5-row run stayed
    assert rows[("vidA/1", 39)]["segment"] == 0 and rows[("vidA/1", 70)]["segment"] == 1
    data = load_gameplay(out)
    ds = GameplayDataset(data, context_length=2, frame_spacing=3, action_shift=1, action_horizon=6, image_size=256)
    meta = data.select_columns(["episode_id", "segment", "frame"]).to_dict()
    assert len(ds) > 0
    crossing = 0
    for i in range(len(ds)):
        frame_rows, action_rows = ds.window_rows(i)
        used = [int(r) for r in frame_rows if r >= 0] + [int(r) for r in action_rows]
        keys = {(meta["episode_id"][r], meta["segment"][r]) for r in used}
        assert len(keys) == 1, i
        span = [meta["frame"][r] for r in used]
        crossing += min(span) < 40 <= max(span)
    assert crossing == 0
    # Without the segment boundary the same rows would give windows over the gap.
    ds_no_seg = GameplayDataset(
        data.remove_columns(["segment"]),
        context_length=2,
        frame_spacing=3,
        action_shift=1,
        action_horizon=6,
        image_size=256,
    )
    assert len(ds_no_seg) > len(ds)


def test_the_tarball_gives_the_same_dataset_as_the_folder(release, imported, tmp_path):
    report = run_import(release, tmp_path / "tar", source=release["tarball"])
    assert report["skipped"] == imported["report"]["skipped"]
    assert rows_by_key(tmp_path / "tar") == imported["rows"]


def test_several_workers_give_the_same_dataset(release, imported, tmp_path):
    report = run_import(release, tmp_path / "w2", workers=2)
    assert report["skipped"] == imported["report"]["skipped"]
    assert rows_by_key(tmp_path / "w2") == imported["rows"]


def test_a_rerun_resumes_and_a_killed_run_redoes_only_the_unlisted_shard(release, imported, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(imported["out"], out)
    again = run_import(release, out)
    assert again["this_run"]["chunks_already_done"] == 3 and again["this_run"]["rows_written"] == 0
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == sorted(again["shards"])
    # As if killed after a shard's rename but before the report named it.
    state = json.loads((out / "import.json").read_text())
    lost = state["shards"].pop()
    state["chunks"] = {k: v for k, v in state["chunks"].items() if v["shard"] != lost}
    state["complete"] = False
    (out / "import.json").write_text(json.dumps(state))
    resumed = run_import(release, out)
    assert resumed["this_run"]["chunks_already_done"] == 3 - sum(
        1 for k in imported["report"]["chunks"] if imported["report"]["chunks"][k]["shard"] == lost
    )
    assert lost not in resumed["shards"] and resumed["complete"]
    assert rows_by_key(out) == imported["rows"]


def test_other_settings_on_the_same_output_are_refused(release, imported, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(imported["out"], out)
    with pytest.raises(ValueError, match="other settings"):
        run_import(release, out, drop_idle=True)


def test_games_filter_and_the_command_line(release, tmp_path):
    from nitrogen.cli import app

    out = tmp_path / "beta"
    args = ["data", "import-nitrogen", str(release["tarball"]), "--videos", str(release["videos"]), "--out", str(out)]
    result = runner.invoke(app, args + ["--games", "Beta"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "import.json").read_text())
    assert report["games"] == {"Beta": {"chunks": 1, "rows": 40}}
    assert report["this_run"]["chunks_filtered"] == 4  # vidA's four chunks are Alpha
    assert "1 chunks imported" in result.output and "vidMissing" not in report["chunks"]


def test_drop_idle_runs_and_geometry_units():
    idle = np.array([0, 1, 1, 1, 0, 1, 0, 1, 1, 1], bool)
    keep, seg = drop_idle_runs(idle, 3)
    assert keep.tolist() == [1, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert seg[keep].tolist() == [0, 1, 1, 1]  # a trailing dropped run opens no segment
    meta = ChunkMetadata.model_validate(metadata("v", 0, 0.0, 10, (1080, 1920), overlay=(1700, 900, 101, 81)))
    geo = frame_geometry(meta, 1280, 720)  # a 720p download of a 1080p video
    assert geo.mask == (1133, 600, 1201, 654)  # scaled by 2/3, rounded outwards
    assert geo.crop == (128, 0, 1152, 720)


def test_finetune_trains_20_steps_on_the_import(imported, tiny_ckpt, tmp_path):
    import csv

    from nitrogen.cli import app

    out = tmp_path / "run"
    args = ["finetune", "--data", str(imported["out"]), "--ckpt", str(tiny_ckpt), "--out", str(out)]
    overrides = ["max_steps=20", "batch_size=2", "save_every=0", "log_every=1", "progress=false"]
    result = runner.invoke(app, args + ["--eval-fraction", "0"] + [f"--set={o}" for o in overrides])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_a_truncated_tarball_is_reported_not_fatal(release, tmp_path):
    data = release["tarball"].read_bytes()
    broken = tmp_path / f"{SHARD}.tar.gz"
    broken.write_bytes(data[: len(data) // 2])
    report = run_import(release, tmp_path / "out", source=broken)
    assert report["complete"]
    assert any("tarball is unreadable" in why for why in report["skipped"].values())


def test_a_video_map_names_downloads_by_other_names(release, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(release["videos"] / "vidA.mp4", videos / "my download.mp4")
    (tmp_path / "map.json").write_text(json.dumps({"vidA": "my download.mp4"}))
    cfg = ImportConfig(
        actions=release["actions"],
        videos=videos,
        out=tmp_path / "out",
        video_map=tmp_path / "map.json",
        games=["Alpha"],
    )
    report = import_nitrogen(cfg)
    assert report["chunks_imported"] == 2 and report["rows_written"] == 140
