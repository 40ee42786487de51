"""Recording of play: mp4 videos written in the background, a gamepad overlay, and run folders.

Three pieces, usable separately:

* :class:`VideoWriter` encodes RGB ``uint8`` frames to H.264 ``.mp4`` (PyAV / libx264, ``yuv420p``)
  in a background thread fed by a bounded queue, so a 60 Hz play loop never waits on the encoder.
* :func:`draw_overlay` draws the gamepad state being played (sticks, triggers, buttons) and an
  optional status line onto a copy of a frame.
* :class:`RunRecorder` owns one run folder::

      <run>/clean.mp4      raw frames
      <run>/debug.mp4      frames with the overlay
      <run>/actions.jsonl  one JSON object per executed action (see :meth:`RunRecorder.record`)
      <run>/episode.json   the run summary, written atomically at :meth:`RunRecorder.close`

``av`` (PyAV) is imported only when a video is actually written, so the overlay and a
``video=False`` recorder work without it.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from ..gamepad import GamepadState

log = logging.getLogger(__name__)

__all__ = [
    "OVERLAY_MIN_HEIGHT",
    "OVERLAY_MIN_WIDTH",
    "RunRecorder",
    "VideoWriter",
    "draw_overlay",
    "even_size",
    "new_run_dir",
]

# --------------------------------------------------------------------------------------------------
# Video writer
# --------------------------------------------------------------------------------------------------

_STOP = object()
"""Queue sentinel: flush the encoder and end the writer thread."""

_OPEN_WRITERS: weakref.WeakSet[VideoWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:  # pragma: no cover - runs at interpreter exit
    """Finish writers that were never closed, so their files stay playable.

    The writer threads are daemons (a forgotten writer must not hang interpreter exit), and daemon
    threads still run while ``atexit`` handlers do, so closing here still flushes the encoder.
    """
    for writer in list(_OPEN_WRITERS):
        try:
            writer.close()
        except BaseException as exc:  # noqa: BLE001 - nothing more to do with an error at exit
            log.warning("could not finish %s at exit: %r", writer.path, exc)


def _av() -> Any:
    """PyAV, imported on first use: only writing a video needs it."""
    import av

    return av


def _check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate an RGB frame: ``(H, W, 3)`` ``uint8`` with H, W >= 2."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"frame must be at least 2x2 pixels, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def even_size(width: int, height: int) -> tuple[int, int]:
    """The encoded size of a ``width`` x ``height`` source: each odd dimension grows by 1 pixel."""
    return width + (width % 2), height + (height % 2)


class VideoWriter:
    """Writes RGB ``uint8`` frames to an H.264 ``.mp4`` from a background thread.

    The first frame fixes the video size. ``yuv420p`` needs an even width and height, so an odd
    dimension is **padded by one pixel** that repeats the last row / column (nothing is cropped):
    a 161x211 source gives a 162x212 video (see :func:`even_size`). Later frames of another size
    are first resized to the first frame's size with ``cv2.INTER_AREA``, then padded the same way.
    Colour conversion is OpenCV's ``COLOR_RGB2YUV_I420`` (BT.601, limited range), and the stream
    is tagged as such so players show the right colours.

    :meth:`write` copies the frame (the caller may reuse its buffer) and puts it on a queue of
    ``max_queue`` frames; conversion and encoding happen in the writer thread. When the queue is
    full, ``write`` **blocks** until the thread catches up, unless ``drop_when_full=True``, in which
    case the frame is dropped, counted in :attr:`dropped`, and ``write`` returns ``False``.

    :meth:`close` flushes the encoder, finishes the file and joins the thread. It is idempotent and
    safe in a ``finally`` after ``KeyboardInterrupt``: the file then holds every accepted frame and
    is a valid mp4. A writer that received no frame creates no file. An exception raised in the
    writer thread is re-raised (once) by the next :meth:`write` or :meth:`close`; the file is then
    unusable and later writes raise ``RuntimeError``.

    One thread should call ``write`` (a single producer). Also a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float = 30.0,
        crf: int = 23,
        preset: str = "veryfast",
        max_queue: int = 32,
        drop_when_full: bool = False,
    ) -> None:
        """Prepare a writer for ``path`` (the parent folder is created; the file on first frame).

        ``fps`` is the playback rate (fractional rates such as 29.97 are kept as a fraction),
        ``crf`` the x264 quality (0-51, lower is better), ``max_queue`` the number of frames that
        may wait for the encoder.
        """
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self.preset = preset
        self.drop_when_full = drop_when_full
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._source_size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._written = 0
        self._encoded = 0
        self._dropped = 0
        self._error: BaseException | None = None
        self._error_reported = False
        self._stop_sent = False
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- public state ------------------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Frames accepted by :meth:`write` (queued for encoding)."""
        return self._written

    @property
    def encoded(self) -> int:
        """Frames the writer thread has handed to the encoder so far (``written`` after close)."""
        return self._encoded

    @property
    def dropped(self) -> int:
        """Frames dropped because the queue was full (only with ``drop_when_full=True``)."""
        return self._dropped

    @property
    def size(self) -> tuple[int, int] | None:
        """The encoded ``(width, height)``, even in both; ``None`` before the first frame."""
        return None if self._source_size is None else even_size(*self._source_size)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writing -----------------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> bool:
        """Queue one RGB ``uint8`` ``(H, W, 3)`` frame; ``True`` if queued, ``False`` if dropped.

        Returns at once unless the queue is full (then it blocks, or drops the frame with
        ``drop_when_full``). Raises an error of the writer thread that was not reported yet.
        """
        if self._stop_sent or self._closed:
            raise RuntimeError(f"write() on a closed VideoWriter ({self.path})")
        self._raise_pending()
        if self._error is not None:
            raise RuntimeError(f"the video writer for {self.path} failed earlier: {self._error!r}")
        arr = np.array(_check_frame(frame), copy=True, order="C")
        if self._source_size is None:
            self._source_size = (arr.shape[1], arr.shape[0])
            self._thread = threading.Thread(target=self._run, name=f"VideoWriter({self.path.name})", daemon=True)
            _OPEN_WRITERS.add(self)
            self._thread.start()
        if self.drop_when_full:
            try:
                self._queue.put_nowait(arr)
            except queue.Full:
                self._dropped += 1
                return False
        else:
            # The thread keeps draining the queue even after an error, so this always returns; the
            # timeout only lets an error surface while waiting.
            while True:
                try:
                    self._queue.put(arr, timeout=0.2)
                    break
                except queue.Full:
                    self._raise_pending()
        self._written += 1
        return True

    def close(self) -> None:
        """Flush the encoder, finish the file and join the thread. Idempotent.

        Re-raises an error of the writer thread that was not reported yet. If interrupted (e.g. a
        second Ctrl-C while flushing), calling ``close`` again finishes the job.
        """
        if self._closed:
            self._raise_pending()
            return
        if self._thread is not None:
            if not self._stop_sent:
                self._queue.put(_STOP)  # the thread always drains, so this cannot block forever
                self._stop_sent = True
            self._thread.join()
        self._stop_sent = True
        self._closed = True
        _OPEN_WRITERS.discard(self)
        self._raise_pending()

    def __enter__(self) -> VideoWriter:  # noqa: PYI034
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoWriter({str(self.path)!r}, fps={self.fps:g}, size={self.size}, written={self._written}, "
            f"encoded={self._encoded}, dropped={self._dropped}, closed={self._closed})"
        )

    # -- internals ---------------------------------------------------------------------------------

    def _raise_pending(self) -> None:
        err = self._error
        if err is not None and not self._error_reported:
            self._error_reported = True
            raise err

    def _to_yuv(self, frame: np.ndarray) -> np.ndarray:
        """Resize to the first frame's size, pad to even, convert RGB -> I420 planes."""
        assert self._source_size is not None
        w, h = self._source_size
        if (frame.shape[1], frame.shape[0]) != (w, h):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if w % 2 or h % 2:
            frame = cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        return cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)

    def _run(self) -> None:
        """Writer thread: encode queued frames until the stop sentinel; drain after an error."""
        container: Any = None
        stream: Any = None
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if self._error is not None:
                    continue  # keep draining so that a blocked write() returns
                try:
                    if container is None:
                        container, stream = self._open()
                    yuv = self._to_yuv(item)  # type: ignore[arg-type]
                    vframe = _av().VideoFrame.from_ndarray(yuv, format="yuv420p")
                    vframe.pts = self._encoded
                    for packet in stream.encode(vframe):
                        container.mux(packet)
                    self._encoded += 1
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error = exc
        finally:
            if container is not None:
                try:
                    if self._error is None:
                        for packet in stream.encode():  # flush the encoder's delayed frames
                            container.mux(packet)
                except BaseException as exc:  # noqa: BLE001
                    self._error = exc
                finally:
                    try:
                        container.close()
                    except BaseException as exc:  # noqa: BLE001
                        if self._error is None:
                            self._error = exc

    def _open(self) -> tuple[Any, Any]:
        av = _av()
        assert self._source_size is not None
        width, height = even_size(*self._source_size)
        rate = Fraction(self.fps).limit_denominator(1001)
        container = av.open(str(self.path), mode="w")
        try:
            stream = container.add_stream(
                "libx264",
                rate=rate,
                options={
                    "preset": self.preset,
                    "crf": str(self.crf),
                    # OpenCV's RGB2YUV_I420 is BT.601 limited range: say so in the bitstream.
                    "x264-params": "colormatrix=smpte170m:colorprim=smpte170m:transfer=smpte170m",
                },
            )
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1) / rate
        except BaseException:
            container.close()
            raise
        return container, stream


# --------------------------------------------------------------------------------------------------
# Overlay
# --------------------------------------------------------------------------------------------------

OVERLAY_MIN_HEIGHT = 480
"""Frames shorter than this are upscaled (by an integer factor) before the overlay is drawn."""
OVERLAY_MIN_WIDTH = 320
"""... and so are frames narrower than this, so that the panel always fits."""

_PANEL_W, _PANEL_H = 300, 150  # panel size at scale 1 (a 480 px tall, >= 320 px wide frame)
_BG = (0, 0, 0)
_OUTLINE = (170, 170, 170)
_LIT = (255, 196, 0)
_DOT = (64, 224, 255)
_TEXT = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

# Button boxes in panel units: name -> (x0, y0, x1, y1, label).
_BOXES: dict[str, tuple[int, int, int, int, str]] = {
    "LEFT_SHOULDER": (10, 26, 80, 40, "LB"),
    "RIGHT_SHOULDER": (220, 26, 290, 40, "RB"),
    "BACK": (104, 14, 138, 30, "BK"),
    "START": (162, 14, 196, 30, "ST"),
    "DPAD_UP": (89, 89, 101, 101, ""),
    "DPAD_DOWN": (89, 113, 101, 125, ""),
    "DPAD_LEFT": (77, 101, 89, 113, ""),
    "DPAD_RIGHT": (101, 101, 113, 113, ""),
}
# Round buttons: name -> (cx, cy, r, label).
_ROUND: dict[str, tuple[int, int, int, str]] = {
    "GUIDE": (150, 22, 9, "G"),
    "NORTH": (255, 60, 10, "N"),
    "SOUTH": (255, 100, 10, "S"),
    "WEST": (235, 80, 10, "W"),
    "EAST": (275, 80, 10, "E"),
}
_STICKS = {"left": (45, 80, 28, "LEFT_THUMB"), "right": (185, 112, 28, "RIGHT_THUMB")}
_TRIGGER_BARS = {"left": (10, 8, 80, 22, "LT"), "right": (220, 8, 290, 22, "RT")}


def _upscale_for_overlay(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    k = max(1, math.ceil(OVERLAY_MIN_HEIGHT / h), math.ceil(OVERLAY_MIN_WIDTH / w))
    if k == 1:
        return frame.copy()
    return cv2.resize(frame, (w * k, h * k), interpolation=cv2.INTER_NEAREST)


def _label(img: np.ndarray, text: str, center: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    if not text:
        return
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    org = (int(center[0] - tw / 2), int(center[1] + th / 2))
    cv2.putText(img, text, org, _FONT, scale, color, 1, cv2.LINE_AA)


def draw_overlay(
    frame: np.ndarray, state: GamepadState, *, text: str | None = None, invert_y: bool = False
) -> np.ndarray:
    """A copy of the RGB ``uint8`` ``frame`` with the gamepad ``state`` (and ``text``) drawn on it.

    Frames shorter than :data:`OVERLAY_MIN_HEIGHT` (480) or narrower than
    :data:`OVERLAY_MIN_WIDTH` (320) px are first upscaled by the smallest integer factor that
    reaches both, with nearest-neighbour sampling so pixel art stays crisp: a 160x210 Atari frame
    becomes 480x630 and a 96x96 frame 480x480. Larger frames keep their size. The result is
    therefore not the input's size for small frames.

    The panel in the bottom-left corner is laid out like a pad and scales with the frame: trigger
    bars (LT, RT) filled by trigger value, shoulder boxes (LB, RB), BACK / GUIDE / START, a d-pad,
    the face buttons (N, S, W, E for NORTH, SOUTH, WEST, EAST), and two stick circles with a dot at
    the stick position (the circle fills when the stick is clicked). Pressed buttons are lit. Stick
    ``+y`` is drawn pointing down the image; ``invert_y=True`` draws ``+y`` up. ``text`` is an
    optional status line at the top-left (e.g. ``"step 12.3 | 55 fps | 120 ms"``).
    """
    img = _upscale_for_overlay(_check_frame(frame))
    h, w = img.shape[:2]
    u = min(h / OVERLAY_MIN_HEIGHT, w / OVERLAY_MIN_WIDTH)
    margin = round(8 * u)
    ox, oy = margin, h - margin - round(_PANEL_H * u)
    thick = max(1, round(u))
    small = 0.35 * u

    def p(x: float, y: float) -> tuple[int, int]:
        return round(ox + x * u), round(oy + y * u)

    def r(v: float) -> int:
        return max(1, round(v * u))

    # Translucent panel background.
    x0, y0 = p(0, 0)
    x1, y1 = min(w, x0 + round(_PANEL_W * u)), min(h, y0 + round(_PANEL_H * u))
    roi = img[y0:y1, x0:x1]
    roi[:] = cv2.addWeighted(roi, 0.45, np.full_like(roi, _BG), 0.55, 0)

    # Triggers: bars filled left to right by the trigger value.
    for side, (bx0, by0, bx1, by1, name) in _TRIGGER_BARS.items():
        value = state.left_trigger if side == "left" else state.right_trigger
        if value > 0:
            cv2.rectangle(img, p(bx0, by0), p(bx0 + (bx1 - bx0) * value, by1), _LIT, -1)
        cv2.rectangle(img, p(bx0, by0), p(bx1, by1), _OUTLINE, thick)
        _label(img, name, p((bx0 + bx1) / 2, (by0 + by1) / 2), small, _TEXT)

    # Rectangular buttons.
    for name, (bx0, by0, bx1, by1, lab) in _BOXES.items():
        if state.pressed(name):
            cv2.rectangle(img, p(bx0, by0), p(bx1, by1), _LIT, -1)
        cv2.rectangle(img, p(bx0, by0), p(bx1, by1), _OUTLINE, thick)
        _label(img, lab, p((bx0 + bx1) / 2, (by0 + by1) / 2), small, _BG if state.pressed(name) else _TEXT)

    # Round buttons.
    for name, (cx, cy, rad, lab) in _ROUND.items():
        if state.pressed(name):
            cv2.circle(img, p(cx, cy), r(rad), _LIT, -1, cv2.LINE_AA)
        cv2.circle(img, p(cx, cy), r(rad), _OUTLINE, thick, cv2.LINE_AA)
        _label(img, lab, p(cx, cy), small, _BG if state.pressed(name) else _TEXT)

    # Sticks: a ring, a centre cross, and a dot at the position.
    for side, (cx, cy, rad, click) in _STICKS.items():
        sx, sy = state.left_stick if side == "left" else state.right_stick
        if invert_y:
            sy = -sy
        if state.pressed(click):
            cv2.circle(img, p(cx, cy), r(rad), _LIT, -1, cv2.LINE_AA)
        cv2.circle(img, p(cx, cy), r(rad), _OUTLINE, thick, cv2.LINE_AA)
        cv2.line(img, p(cx - 4, cy), p(cx + 4, cy), _OUTLINE, 1, cv2.LINE_AA)
        cv2.line(img, p(cx, cy - 4), p(cx, cy + 4), _OUTLINE, 1, cv2.LINE_AA)
        cv2.circle(img, p(cx + sx * rad, cy + sy * rad), r(6), _DOT, -1, cv2.LINE_AA)
        _label(img, "L" if side == "left" else "R", p(cx - rad + 4, cy - rad + 4), small, _TEXT)

    # Status line.
    if text:
        scale = 0.55 * u
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
        pad = r(4)
        tx0, ty0 = margin, margin
        tx1, ty1 = min(w, tx0 + tw + 2 * pad), min(h, ty0 + th + base + 2 * pad)
        troi = img[ty0:ty1, tx0:tx1]
        troi[:] = cv2.addWeighted(troi, 0.45, np.full_like(troi, _BG), 0.55, 0)
        cv2.putText(img, text, (tx0 + pad, ty0 + pad + th), _FONT, scale, _TEXT, thick, cv2.LINE_AA)
    return img


# --------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------

_RESERVED_KEYS = frozenset({"step", "substep", "frame", "time_s", "state", "stale"})


def new_run_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Create and return a fresh ``root/<YYYYmmdd-HHMMSS>-<name>`` folder.

    ``name`` is sanitised to ``[A-Za-z0-9._-]`` (other runs of characters become ``-``). If the
    folder exists already (two runs in the same second), ``-2``, ``-3``, ... is appended.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    base = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{safe}"
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a unique run folder for {base!r} in {root}")


def _json_default(obj: object) -> object:
    """JSON encoder for numpy scalars/arrays, paths and sets found in extra fields."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, GamepadState):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


class RunRecorder:
    """Records one run into ``out_dir``: videos, per-action log, and a summary.

    Files (``video=False`` writes neither video; ``debug_video=False`` only the debug one):

    * ``clean.mp4``: the frames as given; ``debug.mp4``: the frames with :func:`draw_overlay`
      (so small frames are upscaled there). Both at ``fps``, via :class:`VideoWriter`.
    * ``actions.jsonl``: one line per :meth:`record` call, flushed per line::

          {"step": 3, "substep": 1, "frame": 19, "time_s": 0.316, "state": {...GamepadState.to_dict()},
           "stale": false, ...extra fields}

      ``frame`` is the index of the frame in the videos (0-based), ``time_s`` seconds since the
      recorder was created (unless given).
    * ``episode.json``: written atomically (temp file + rename) by :meth:`close`; see there.

    Use as a context manager, or call :meth:`close` in a ``finally``; leaving the ``with`` block by
    ``KeyboardInterrupt`` still gives playable videos and an ``episode.json`` with
    ``"interrupted": true``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        fps: float,
        video: bool = True,
        debug_video: bool = True,
        env_id: str | None = None,
        mode: str | None = None,
        model: Mapping[str, Any] | None = None,
        crf: int = 23,
        max_queue: int = 32,
        drop_when_full: bool = False,
    ) -> None:
        """Create ``out_dir`` and open ``actions.jsonl``; videos start with the first frame.

        ``env_id``, ``mode`` and ``model`` (e.g. checkpoint name, parameters) go to
        ``episode.json``; ``crf``, ``max_queue`` and ``drop_when_full`` are passed to both
        :class:`VideoWriter`.
        """
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.env_id = env_id
        self.mode = mode
        self.model: dict[str, Any] = dict(model or {})
        opts: dict[str, Any] = {"fps": fps, "crf": crf, "max_queue": max_queue, "drop_when_full": drop_when_full}
        self.clean_video = VideoWriter(self.out_dir / "clean.mp4", **opts) if video else None
        self.debug_video = VideoWriter(self.out_dir / "debug.mp4", **opts) if video and debug_video else None
        self._actions = open(self.out_dir / "actions.jsonl", "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._t0 = time.perf_counter()
        self._started_at = datetime.now(timezone.utc)
        self._frames = 0
        self._steps: set[int] = set()
        self._stale = 0
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._fps_ema: float | None = None
        self._latencies: list[float] = []
        self._score = 0.0
        self._rewards = 0
        self._summary: dict[str, Any] | None = None

    @property
    def frames(self) -> int:
        """Frames recorded so far."""
        return self._frames

    @property
    def score(self) -> float:
        """Sum of the rewards added so far."""
        return self._score

    @property
    def closed(self) -> bool:
        return self._summary is not None

    def add_latency(self, ms: float) -> None:
        """Add one inference latency (milliseconds) for the p50/p95 in ``episode.json``."""
        self._latencies.append(float(ms))

    def add_reward(self, r: float) -> None:
        """Add one environment reward to the score."""
        self._score += float(r)
        self._rewards += 1

    def status_text(self, step: int, substep: int, stale: bool = False) -> str:
        """The default overlay line: ``"step 12.3 | 55 fps | 120 ms"`` (fps and latency when known)."""
        parts = [f"step {step}.{substep}"]
        if self._fps_ema is not None:
            parts.append(f"{self._fps_ema:.0f} fps")
        if self._latencies:
            parts.append(f"{self._latencies[-1]:.0f} ms")
        if stale:
            parts.append("stale")
        return " | ".join(parts)

    def record(
        self,
        frame: np.ndarray,
        state: GamepadState,
        /,
        *,
        step: int,
        substep: int,
        stale: bool = False,
        time_s: float | None = None,
        text: str | None = None,
        **fields: Any,
    ) -> None:
        """Record one executed action and the frame it was played on.

        Writes ``frame`` to ``clean.mp4``, ``draw_overlay(frame, state, text=...)`` to
        ``debug.mp4`` (``text`` defaults to :meth:`status_text`) and a line to ``actions.jsonl``.
        ``stale`` marks an action replayed from an old chunk; ``fields`` are extra JSON-serialisable
        keys for the line (they may not reuse the standard keys).
        """
        if self._summary is not None:
            raise RuntimeError(f"record() on a closed RunRecorder ({self.out_dir})")
        clash = _RESERVED_KEYS & fields.keys()
        if clash:
            raise ValueError(f"extra fields may not use the reserved keys {sorted(clash)}")
        now = time.perf_counter() - self._t0
        if self._last_t is not None and now > self._last_t:
            inst = 1.0 / (now - self._last_t)
            self._fps_ema = inst if self._fps_ema is None else 0.9 * self._fps_ema + 0.1 * inst
        if self._first_t is None:
            self._first_t = now
        self._last_t = now

        if self.clean_video is not None:
            self.clean_video.write(frame)
        if self.debug_video is not None:
            overlay_text = text if text is not None else self.status_text(step, substep, stale)
            self.debug_video.write(draw_overlay(frame, state, text=overlay_text))
        line = {
            "step": int(step),
            "substep": int(substep),
            "frame": self._frames,
            "time_s": round(float(now if time_s is None else time_s), 6),
            "state": state.to_dict(),
            "stale": bool(stale),
            **fields,
        }
        self._actions.write(json.dumps(line, default=_json_default) + "\n")
        self._frames += 1
        self._steps.add(int(step))
        self._stale += bool(stale)

    def close(self, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Finish the videos and the log, write ``episode.json``, and return its content.

        ``episode.json`` holds: ``env_id``, ``mode``, ``model`` (dict), ``score`` (sum of rewards),
        ``rewards`` (how many), ``steps`` (distinct ``step`` values recorded), ``frames``,
        ``stale_frames``, ``fps`` (target), ``real_fps`` (frames over the time between the first and
        last record; ``None`` below 2 frames), ``duration_s``, ``latency_ms`` (``count``, ``p50``,
        ``p95``, ``mean``, ``max`` of the :meth:`add_latency` values, linear-interpolated
        percentiles; ``None`` without values), ``dropped_frames``, ``videos`` (file names or
        ``None``), ``started_at`` / ``ended_at`` (UTC ISO 8601), and the keys of ``summary``, which
        override computed ones. Idempotent: a later call returns the first result unchanged.
        Videos are finished even if one fails; ``episode.json`` is written (with ``errors``) and
        the first error is then raised.
        """
        if self._summary is not None:
            return self._summary
        errors: list[BaseException] = []
        for writer in (self.clean_video, self.debug_video):
            if writer is None:
                continue
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001 - reported below, after episode.json
                errors.append(exc)
        self._actions.close()

        lat = self._latencies
        real_fps = None
        if self._frames >= 2 and self._first_t is not None and self._last_t is not None:
            span = self._last_t - self._first_t
            real_fps = (self._frames - 1) / span if span > 0 else None
        result: dict[str, Any] = {
            "env_id": self.env_id,
            "mode": self.mode,
            "model": self.model,
            "score": self._score,
            "rewards": self._rewards,
            "steps": len(self._steps),
            "frames": self._frames,
            "stale_frames": self._stale,
            "fps": self.fps,
            "real_fps": real_fps,
            "duration_s": time.perf_counter() - self._t0,
            "latency_ms": {
                "count": len(lat),
                "p50": _percentile(lat, 50),
                "p95": _percentile(lat, 95),
                "mean": float(np.mean(lat)) if lat else None,
                "max": float(np.max(lat)) if lat else None,
            },
            "dropped_frames": sum(w.dropped for w in (self.clean_video, self.debug_video) if w is not None),
            "videos": {
                "clean": self.clean_video.path.name if self.clean_video is not None else None,
                "debug": self.debug_video.path.name if self.debug_video is not None else None,
            },
            "started_at": self._started_at.isoformat(),
            "ended_at": datetime.now(timezone.utc).isoformat(),
        }
        if errors:
            result["errors"] = [f"{type(e).__name__}: {e}" for e in errors]
        result.update(summary or {})

        path = self.out_dir / "episode.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self._summary = result
        if errors:
            raise errors[0]
        return result

    def __enter__(self) -> RunRecorder:  # noqa: PYI034
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        extra: dict[str, Any] | None = None
        if exc_type is not None:
            extra = {"interrupted": issubclass(exc_type, KeyboardInterrupt), "exception": repr(exc)}
        self.close(extra)

    def __repr__(self) -> str:
        return f"RunRecorder({str(self.out_dir)!r}, frames={self._frames}, closed={self.closed})"
