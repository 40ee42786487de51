"""Tests of nitrogen.rundir.recording with real files: encode with PyAV/libx264, decode back, inspect."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest

from nitrogen.gamepad import GamepadState
from nitrogen.rundir.recording import (
    OVERLAY_MIN_HEIGHT,
    RunRecorder,
    VideoWriter,
    draw_overlay,
    even_size,
    new_run_dir,
)


def _decode(path: Path) -> list[np.ndarray]:
    """All frames of a video as RGB arrays (this fails on an unfinished / invalid mp4)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = rgb
    return frame


def _state(i: int) -> GamepadState:
    x = float(np.sin(i / 3.0))
    return GamepadState(
        buttons=frozenset({"SOUTH"}) if i % 2 else frozenset(),
        left_stick=(x, -x),
        right_stick=(0.0, x),
        left_trigger=float(i % 3 == 0),
    )


# --------------------------------------------------------------------------------------------------
# VideoWriter
# --------------------------------------------------------------------------------------------------


def test_odd_sized_frames_roundtrip_with_right_colours(tmp_path: Path) -> None:
    path = tmp_path / "red.mp4"
    red = _solid(211, 161, (255, 0, 0))
    with VideoWriter(path, fps=30, crf=18) as writer:
        for _ in range(37):
            writer.write(red)
    assert writer.closed and writer.written == writer.encoded == 37
    assert writer.size == even_size(161, 211) == (162, 212)  # padded by one pixel, not cropped

    frames = _decode(path)
    assert len(frames) == 37
    assert frames[0].shape == (212, 162, 3)
    mean = frames[20].reshape(-1, 3).mean(axis=0)
    assert abs(mean[0] - 255) < 8 and mean[1] < 8 and mean[2] < 8, mean  # red stays red (RGB order)
    # The padded column / row repeats the edge, so it is red too.
    assert frames[20][:, -1, 0].min() > 230 and frames[20][-1, :, 0].min() > 230


def test_mixed_colours_and_resized_frames(tmp_path: Path) -> None:
    path = tmp_path / "mixed.mp4"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]
    with VideoWriter(path, fps=15) as writer:
        for i, c in enumerate(colours):
            size = (100, 64) if i % 2 == 0 else (37, 51)  # later frames of another size get resized
            writer.write(_solid(*size, c))
    frames = _decode(path)
    assert len(frames) == len(colours)
    for decoded, c in zip(frames, colours, strict=True):
        assert decoded.shape == (100, 64, 3)
        assert np.abs(decoded.reshape(-1, 3).mean(axis=0) - np.array(c)).max() < 8


def test_write_is_queued_not_encoded_inline(tmp_path: Path) -> None:
    path = tmp_path / "burst.mp4"
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (360, 480, 3), dtype=np.uint8) for _ in range(6)]
    writer = VideoWriter(path, fps=60, max_queue=64)
    try:
        for i in range(60):
            assert writer.write(noise[i % len(noise)]) is True
        # write() returned for all 60 frames while the encoder (opening the file, then noise at
        # x264 speed) is still working through them: the frames wait in the queue.
        assert writer.written == 60
        assert writer.encoded < writer.written
    finally:
        writer.close()
    assert writer.encoded == writer.written == 60 and writer.dropped == 0
    assert len(_decode(path)) == 60


def test_drop_when_full_counts_dropped_frames(tmp_path: Path) -> None:
    path = tmp_path / "drop.mp4"
    frame = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with VideoWriter(path, fps=30, max_queue=1, drop_when_full=True) as writer:
        results = [writer.write(frame) for _ in range(40)]
    assert writer.dropped == results.count(False) > 0
    assert writer.written == results.count(True) == 40 - writer.dropped
    assert len(_decode(path)) == writer.written


def test_caller_buffer_may_be_reused(tmp_path: Path) -> None:
    path = tmp_path / "reuse.mp4"
    buf = np.zeros((64, 64, 3), np.uint8)
    with VideoWriter(path, fps=30) as writer:
        for value in (0, 255):
            buf[:] = value
            writer.write(buf)
        buf[:] = 128  # after the last write: must not change what was queued
    frames = _decode(path)
    assert frames[0].mean() < 8 and frames[1].mean() > 247


def test_close_in_finally_after_keyboard_interrupt(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.mp4"
    writer = VideoWriter(path, fps=30)
    with pytest.raises(KeyboardInterrupt):
        try:
            for i in range(100):
                if i == 23:
                    raise KeyboardInterrupt
                writer.write(_solid(48, 64, (i * 10 % 256, 0, 0)))
        finally:
            writer.close()
    writer.close()  # idempotent
    assert len(_decode(path)) == 23


def test_no_frames_no_file_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    writer = VideoWriter(path)
    with pytest.raises(ValueError):
        writer.write(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        writer.write(np.zeros((10, 10, 3), np.float32))
    writer.close()
    assert not path.exists()
    with pytest.raises(RuntimeError):
        writer.write(np.zeros((10, 10, 3), np.uint8))


def test_writer_thread_error_is_reraised(tmp_path: Path) -> None:
    target = tmp_path / "is_a_dir.mp4"
    target.mkdir()  # the writer thread cannot open a directory as a file
    writer = VideoWriter(target, fps=30)
    writer.write(_solid(32, 32, (1, 2, 3)))
    with pytest.raises(OSError):  # the thread's own exception (PyAV's IsADirectoryError)
        writer.close()
    writer.close()  # reported once; closing again is quiet
    with pytest.raises(RuntimeError):
        writer.write(_solid(32, 32, (1, 2, 3)))


# --------------------------------------------------------------------------------------------------
# Overlay
# --------------------------------------------------------------------------------------------------


def _dot_centroid(img: np.ndarray) -> np.ndarray:
    """Mean (x, y) of the pixels painted in the stick-dot colour."""
    mask = np.abs(img.astype(int) - np.array([64, 224, 255])).sum(axis=2) < 30
    ys, xs = np.nonzero(mask)
    assert xs.size > 0
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("shape", [(210, 160), (96, 96), (720, 1280)])
def test_overlay_shape_and_type(shape: tuple[int, int]) -> None:
    frame = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    before = frame.copy()
    out = draw_overlay(frame, _state(1), text="step 12.3 | 55 fps | 120 ms")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] >= OVERLAY_MIN_HEIGHT
    if shape[0] < OVERLAY_MIN_HEIGHT:
        k = out.shape[0] // shape[0]
        assert out.shape[:2] == (shape[0] * k, shape[1] * k)  # integer upscale keeps the aspect
    else:
        assert out.shape[:2] == shape
    np.testing.assert_array_equal(frame, before)  # the input is not modified


def test_overlay_lights_pressed_buttons() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    idle = draw_overlay(frame, GamepadState())
    south = draw_overlay(frame, GamepadState(buttons=frozenset({"SOUTH"})))
    east = draw_overlay(frame, GamepadState(buttons=frozenset({"EAST"})))
    d_south = np.abs(south.astype(int) - idle).sum(axis=2) > 60
    d_east = np.abs(east.astype(int) - idle).sum(axis=2) > 60
    assert d_south.sum() > 50 and d_east.sum() > 50
    assert not (d_south & d_east).any()  # different buttons light different regions
    # SOUTH sits below EAST in the face-button diamond.
    assert np.nonzero(d_south)[0].mean() > np.nonzero(d_east)[0].mean()


def test_overlay_stick_dot_follows_the_stick() -> None:
    frame = np.zeros((96, 96, 3), np.uint8)
    cents = {x: _dot_centroid(draw_overlay(frame, GamepadState(left_stick=(x, 0.0)))) for x in (-1.0, 0.0, 1.0)}
    assert cents[-1.0][0] < cents[0.0][0] < cents[1.0][0]
    assert cents[-1.0][1] == pytest.approx(cents[1.0][1], abs=0.5)
    down = _dot_centroid(draw_overlay(frame, GamepadState(left_stick=(0.0, 1.0))))
    up = _dot_centroid(draw_overlay(frame, GamepadState(left_stick=(0.0, 1.0)), invert_y=True))
    assert down[1] > cents[0.0][1] > up[1]


def test_overlay_trigger_bar_fills_with_value() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    lit = [
        (np.abs(draw_overlay(frame, GamepadState(left_trigger=v)).astype(int) - [255, 196, 0]).sum(axis=2) < 30).sum()
        for v in (0.0, 0.5, 1.0)
    ]
    assert lit[0] < lit[1] < lit[2]


def test_overlay_text_changes_pixels() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    assert (draw_overlay(frame, GamepadState(), text="step 1.0") != draw_overlay(frame, GamepadState())).any()


# --------------------------------------------------------------------------------------------------
# RunRecorder
# --------------------------------------------------------------------------------------------------


def test_run_recorder_end_to_end(tmp_path: Path) -> None:
    run = new_run_dir(tmp_path, "pong test/1")
    assert run.is_dir() and run.parent == tmp_path and run.name.endswith("-pong-test-1")
    n = 12
    latencies = [100.0, 20.0, 40.0, 30.0, 10.0]
    with RunRecorder(run, fps=30, env_id="ALE/Pong-v5", mode="sync", model={"name": "tiny", "params": 1.5e6}) as rec:
        for ms in latencies:
            rec.add_latency(ms)
        for i in range(n):
            frame = _solid(210, 160, (i * 20, 50, 200 - i * 10))
            rec.record(frame, _state(i), step=i // 4, substep=i % 4, stale=i == 7, reward=np.float32(0.5))
            rec.add_reward(0.5)
        summary = rec.close({"episode": 3})
    assert rec.close() is summary  # idempotent

    clean, debug = _decode(run / "clean.mp4"), _decode(run / "debug.mp4")
    assert len(clean) == len(debug) == n
    assert clean[0].shape == (210, 160, 3)
    assert debug[0].shape[0] >= OVERLAY_MIN_HEIGHT

    lines = [json.loads(line) for line in (run / "actions.jsonl").read_text().splitlines()]
    assert len(lines) == n
    keys = [(d["step"], d["substep"]) for d in lines]
    assert keys == sorted(keys) and len(set(keys)) == n
    assert [d["frame"] for d in lines] == list(range(n))
    assert all(a["time_s"] <= b["time_s"] for a, b in pairwise(lines))
    assert lines[3]["state"] == _state(3).to_dict() and lines[3]["state"]["buttons"] == ["SOUTH"]
    assert [d["stale"] for d in lines].count(True) == 1 and lines[7]["stale"]
    assert lines[0]["reward"] == 0.5

    on_disk = json.loads((run / "episode.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert on_disk["frames"] == n and on_disk["steps"] == 3 and on_disk["stale_frames"] == 1
    assert on_disk["score"] == pytest.approx(6.0) and on_disk["rewards"] == n
    assert on_disk["env_id"] == "ALE/Pong-v5" and on_disk["mode"] == "sync"
    assert on_disk["model"] == {"name": "tiny", "params": 1.5e6}
    assert on_disk["episode"] == 3 and on_disk["fps"] == 30
    assert on_disk["real_fps"] is not None and on_disk["real_fps"] > 0
    lat = on_disk["latency_ms"]
    # sorted: 10 20 30 40 100 -> p50 = 30; p95 at rank 0.95 * 4 = 3.8 -> 40 + 0.8 * 60 = 88.
    assert lat["count"] == 5 and lat["p50"] == pytest.approx(30.0) and lat["p95"] == pytest.approx(88.0)
    assert lat["mean"] == pytest.approx(40.0) and lat["max"] == 100.0
    assert on_disk["videos"] == {"clean": "clean.mp4", "debug": "debug.mp4"} and on_disk["dropped_frames"] == 0

    with pytest.raises(RuntimeError):
        rec.record(_solid(210, 160, (0, 0, 0)), GamepadState(), step=9, substep=0)


def test_run_recorder_survives_keyboard_interrupt(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), RunRecorder(run, fps=60) as rec:
        for i in range(50):
            if i == 17:
                raise KeyboardInterrupt
            rec.record(_solid(96, 96, (0, i * 5, 0)), _state(i), step=i, substep=0)
    assert len(_decode(run / "clean.mp4")) == 17
    assert len(_decode(run / "debug.mp4")) == 17
    assert len((run / "actions.jsonl").read_text().splitlines()) == 17
    episode = json.loads((run / "episode.json").read_text())
    assert episode["interrupted"] is True and episode["frames"] == 17
    assert episode["latency_ms"]["p50"] is None


def test_run_recorder_without_video(tmp_path: Path) -> None:
    run = tmp_path / "novideo"
    with RunRecorder(run, fps=30, video=False) as rec:
        for i in range(5):
            rec.record(_solid(50, 50, (9, 9, 9)), _state(i), step=i, substep=0)
    assert not list(run.glob("*.mp4"))
    assert len((run / "actions.jsonl").read_text().splitlines()) == 5
    episode = json.loads((run / "episode.json").read_text())
    assert episode["frames"] == 5 and episode["videos"] == {"clean": None, "debug": None}


def test_run_recorder_without_debug_video_and_reserved_fields(tmp_path: Path) -> None:
    run = tmp_path / "cleanonly"
    rec = RunRecorder(run, fps=30, debug_video=False)
    try:
        with pytest.raises(ValueError):
            rec.record(_solid(50, 50, (9, 9, 9)), GamepadState(), step=0, substep=0, frame=3)
        rec.record(_solid(50, 50, (9, 9, 9)), GamepadState(), step=0, substep=0)
    finally:
        rec.close()
    assert sorted(p.name for p in run.glob("*.mp4")) == ["clean.mp4"]
    assert len(_decode(run / "clean.mp4")) == 1


def test_new_run_dir_is_unique(tmp_path: Path) -> None:
    dirs = {new_run_dir(tmp_path, "same") for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)
