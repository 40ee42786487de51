"""Run folders: one folder per played episode, with its videos, action log and summary.

:class:`RunRecorder` owns one run folder::

    <run>/clean.mp4      raw frames
    <run>/debug.mp4      the debug frames: picture, pad panel and status text (see overlay.py)
    <run>/actions.jsonl  one JSON object per executed action (see :meth:`RunRecorder.record`)
    <run>/episode.json   the run summary, written at :meth:`RunRecorder.close`

How each file is written (every write goes through :mod:`nitrogen.atomic` or is a stream):

* ``episode.json`` with :func:`nitrogen.atomic.atomic_write_json`: a reader sees no file or the
  whole summary.
* the videos by :class:`~nitrogen.rundir.video.VideoWriter`, under a temporary name renamed into
  place on close (a half-written mp4 has no index and cannot be played anyway).
* ``actions.jsonl`` is **streamed** to its final name, one flushed line per action: it is the
  record of what was played, so a crash or a kill must leave every action up to that point
  readable (at worst the last line is torn).

:func:`new_run_dir` makes a fresh, uniquely named run folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..atomic import atomic_write_json
from ..gamepad import GamepadState, PressCounter
from .overlay import debug_frame
from .video import VideoWriter

__all__ = ["RunRecorder", "new_run_dir"]

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

    * ``clean.mp4``: the frames as given; ``debug.mp4``: their
      :func:`~nitrogen.rundir.overlay.debug_frame` (the picture, upscaled when small, with the pad
      panel and status text beside or below it). Both at ``fps``, via :class:`VideoWriter`, and
      renamed into place when finished.
    * ``actions.jsonl``: one line per :meth:`record` call, streamed and flushed per line (a crash
      keeps every line written so far)::

          {"step": 3, "substep": 1, "frame": 19, "time_s": 0.316, "state": {...GamepadState.to_dict()},
           "stale": false, ...extra fields}

      ``frame`` is the index of the frame in the videos (0-based), ``time_s`` seconds since the
      recorder was created (unless given).
    * ``episode.json``: written atomically (:mod:`nitrogen.atomic`) by :meth:`close`; see there.

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
        self._presses = PressCounter()
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
        """The default status line of the debug video: ``"step 12.3 | 55 fps | 120 ms"`` (fps and
        latency when known)."""
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

        Writes ``frame`` to ``clean.mp4``, ``debug_frame(frame, state, text=...)`` to
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
            status = text if text is not None else self.status_text(step, substep, stale)
            self.debug_video.write(debug_frame(frame, state, text=status))
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
        self._presses.add(state)
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
        ``None``), ``button_press_rate`` (button -> share of the recorded frames it was pressed on,
        the virtual right-stick buttons included, :class:`~nitrogen.gamepad.PressCounter`; START,
        GUIDE and BACK read 0 when the loop masks the menu buttons), ``started_at`` / ``ended_at`` (UTC ISO 8601), and the keys of ``summary``, which
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
            "button_press_rate": self._presses.rates(),
            "started_at": self._started_at.isoformat(),
            "ended_at": datetime.now(timezone.utc).isoformat(),
        }
        if errors:
            result["errors"] = [f"{type(e).__name__}: {e}" for e in errors]
        result.update(summary or {})

        atomic_write_json(self.out_dir / "episode.json", result, default=_json_default)
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
