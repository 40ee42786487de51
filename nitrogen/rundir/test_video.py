"""Tests of nitrogen.rundir.video with real files: encode with PyAV/libx264, decode back, inspect."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from nitrogen.rundir.video import VideoWriter, even_size


def _decode(path: Path) -> list[np.ndarray]:
    """All frames of a video as RGB arrays (this fails on an unfinished / invalid mp4)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = rgb
    return frame


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
