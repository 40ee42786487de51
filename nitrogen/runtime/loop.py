"""The agent loop: a policy plays a game through gamepad states, in sync or async mode.

``sync`` (the original's behaviour): the game waits while the policy thinks, then the whole chunk
plays, one 60 Hz frame per action.

``async`` (the default for live games): the game never waits. The next chunk is requested as soon
as the previous one arrives, from the newest frame. When a chunk arrives, the actions whose time has
already passed (the frames played since its observation) are skipped as stale, and execution
switches to it. If the current chunk runs out first, the pad is held neutral (a starved frame).
Embedded games are stepped on a wall clock at their frame rate, so they behave like live ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..gamepad import MENU_BUTTONS, NEUTRAL, GamepadState, states_from_chunk
from ..policy import ActionChunk, Policy

log = logging.getLogger("nitrogen.runtime.loop")

POLICY_FRAME_SIZE = 256


class StartupPress(BaseModel):
    """One step of a game's start-up sequence: hold ``buttons`` for ``frames`` frames."""

    model_config = ConfigDict(extra="forbid")

    buttons: list[str] = Field(default_factory=list)
    frames: int = Field(1, ge=1)


class PlayConfig(BaseModel):
    """Settings of :func:`play`; the defaults are those of ``nitrogen play``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["sync", "async"] = "async"
    max_frames: int | None = Field(None, ge=1, description="stop an episode after this many game frames")
    episodes: int = Field(1, ge=1)
    seed: int | None = None
    allow_menu: bool = Field(False, description="let START, GUIDE and BACK through")
    startup: list[StartupPress] = Field(default_factory=list, description="presses before the policy takes over")
    fps: float | None = Field(None, gt=0, description="the game clock (default: the game's own frame rate)")
    realtime: bool | None = Field(
        None,
        description="step an embedded game on its clock, like a live one (default: in async mode only; "
        "sync mode then runs it as fast as the policy allows)",
    )
    action_shift: int | None = Field(
        None, ge=0, description="frames between an observation and its chunk's first action (default: the policy's)"
    )
    actions_per_chunk: int | None = Field(
        None,
        ge=1,
        description="sync mode: play only the first N actions of each chunk, then ask again "
        "(receding horizon; default: the whole chunk)",
    )
    video: bool = True


@dataclass
class EpisodeStats:
    frames: int = 0
    score: float = 0.0
    chunks: int = 0
    executed: int = 0
    stale: int = 0
    starved: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        wall = max(self.wall_s, 1e-9)
        return {
            "frames": self.frames,
            "score": self.score,
            "chunks": self.chunks,
            "executed_actions": self.executed,
            "stale_actions": self.stale,
            "starved_frames": self.starved,
            "real_fps": self.frames / wall,
            "effective_actions_per_s": self.executed / wall,
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)),
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
        }


def policy_frame(frame: np.ndarray) -> np.ndarray:
    """Squash a game frame to the policy's 256x256 with ``INTER_AREA`` before it is sent."""
    if frame.shape[:2] == (POLICY_FRAME_SIZE, POLICY_FRAME_SIZE):
        return frame
    return cv2.resize(frame, (POLICY_FRAME_SIZE, POLICY_FRAME_SIZE), interpolation=cv2.INTER_AREA)


def mask_menu(state: GamepadState, allow_menu: bool) -> GamepadState:
    return state if allow_menu else state.without(MENU_BUTTONS)


def startup_states(presses: Sequence[StartupPress]) -> list[GamepadState]:
    """A start-up sequence, described in data, as one pad state per frame."""
    states = []
    for press in presses:
        states.extend([GamepadState(buttons=frozenset(press.buttons))] * press.frames)
    return states


class _Predictor:
    """Runs ``policy.predict`` in a background thread; the newest result is picked up by the loop."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._request: tuple[np.ndarray, int] | None = None
        self._result: tuple[ActionChunk, int, float] | None = None
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._working = False
        self._thread = threading.Thread(target=self._run, name="nitrogen-predict", daemon=True)
        self._thread.start()

    def submit(self, frame: np.ndarray, frame_index: int) -> None:
        with self._cv:
            self._request = (frame, frame_index)
            self._cv.notify_all()

    def poll(self) -> tuple[ActionChunk, int, float] | None:
        with self._cv:
            if self._error is not None:
                raise self._error
            result, self._result = self._result, None
            return result

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                frame, index = self._request
                self._request = None
                self._working = True
            started = time.perf_counter()
            try:
                chunk = self.policy.predict(frame)
            except BaseException as exc:  # surfaced to the loop on its next poll
                with self._cv:
                    self._error, self._working = exc, False
                return
            with self._cv:
                self._result = (chunk, index, (time.perf_counter() - started) * 1e3)
                self._working = False
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)


def run_episode(
    env: Any,
    policy: Policy,
    config: PlayConfig,
    recorder: Any = None,
    *,
    seed: int | None = None,
    on_progress: Any = None,
) -> EpisodeStats:
    """Play one episode; returns its stats. Ctrl-C ends it early with ``interrupted`` set."""
    stats = EpisodeStats()
    frame, _ = env.reset(seed=seed)
    policy.reset()
    started = time.perf_counter()

    def apply(state: GamepadState, *, chunk: int, substep: int, stale: bool = False) -> bool:
        nonlocal frame
        state = mask_menu(state, config.allow_menu)
        if recorder is not None:
            recorder.record(frame, state, step=chunk, substep=substep, stale=stale)
        frame, reward, terminated, truncated, _ = env.step(state)
        stats.frames += 1
        stats.score += float(reward)
        if on_progress is not None:
            on_progress(stats)
        limit = config.max_frames is not None and stats.frames >= config.max_frames
        return bool(terminated or truncated or limit)

    try:
        done = False
        for k, state in enumerate(startup_states(config.startup)):
            done = apply(state, chunk=-1, substep=k)
            if done:
                break
        if not done:
            run = _run_sync if config.mode == "sync" else _run_async
            run(env, policy, config, stats, apply, lambda: frame)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        stats.wall_s = time.perf_counter() - started
    return stats


class _Clock:
    """One game frame per period on the wall clock; a slow frame is not caught up on."""

    def __init__(self, fps: float, enabled: bool):
        self.period, self.enabled = 1.0 / fps, enabled
        self.restart()

    def restart(self) -> None:
        self.next_tick = time.perf_counter()

    def tick(self) -> None:
        if not self.enabled:
            return
        self.next_tick += self.period
        delay = self.next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the game's own clock
        else:
            self.next_tick = time.perf_counter()


def _game_clock(env: Any, config: PlayConfig) -> _Clock:
    fps = config.fps or float(getattr(env, "fps", 60.0))
    realtime = config.realtime if config.realtime is not None else config.mode == "async"
    return _Clock(fps, realtime)


def _run_sync(env, policy, config, stats, apply, current_frame) -> None:
    """Wait for each chunk (the game waits too), then play it (its first ``actions_per_chunk``)."""
    clock = _game_clock(env, config)
    pause, resume = getattr(env, "pause", None), getattr(env, "resume", None)
    while True:
        t0 = time.perf_counter()
        if pause is not None:
            pause()  # a live game waits for the policy, as in the original
        try:
            chunk = policy.predict(policy_frame(current_frame()))
        finally:
            if resume is not None:
                resume()
        stats.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        clock.restart()  # the game was paused while the policy thought
        states = states_from_chunk(chunk.action_tensor)[: config.actions_per_chunk]
        for k, state in enumerate(states):
            stats.executed += 1
            if apply(state, chunk=stats.chunks, substep=k):
                stats.chunks += 1
                return
            clock.tick()
        stats.chunks += 1


def _run_async(env, policy, config, stats, apply, current_frame) -> None:
    """The game advances on its clock; chunks switch in as they arrive, stale actions skipped."""
    clock = _game_clock(env, config)
    shift = config.action_shift if config.action_shift is not None else int(_safe_info(policy).get("action_shift", 0))
    predictor = _Predictor(policy)
    try:
        predictor.submit(policy_frame(current_frame()), stats.frames)
        states: list[GamepadState] = []
        position, chunk_id = 0, -1
        clock.restart()
        while True:
            arrived = predictor.poll()
            if arrived is not None:
                chunk, observed_at, latency_ms = arrived
                stats.latencies_ms.append(latency_ms)
                stats.chunks += 1
                chunk_id += 1
                states = states_from_chunk(chunk.action_tensor)
                # Action k is meant for frame observed_at + shift + k: those whose frame has
                # already been played are stale.
                position = min(max(stats.frames - observed_at - shift, 0), len(states))
                stats.stale += position
                predictor.submit(policy_frame(current_frame()), stats.frames)
            if position < len(states):
                state, substep = states[position], position
                position += 1
                stats.executed += 1
            else:
                state, substep = NEUTRAL, -1
                stats.starved += 1
            if apply(state, chunk=chunk_id, substep=substep):
                return
            clock.tick()
    finally:
        predictor.close()


def play(
    env: Any,
    policy: Policy,
    config: PlayConfig | None = None,
    *,
    out_dir: Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Play ``config.episodes`` episodes, recording each into its own folder under ``out_dir``."""
    from ..rundir.run_folder import RunRecorder, new_run_dir

    config = config or PlayConfig()
    summaries = []
    policy_info = _safe_info(policy)
    for episode in range(config.episodes):
        seed = None if config.seed is None else config.seed + episode
        run_dir = new_run_dir(out_dir, f"{_slug(getattr(env, 'spec_id', 'game'))}-ep{episode}") if out_dir else None
        recorder = RunRecorder(run_dir, fps=float(getattr(env, "fps", 60.0)), video=config.video) if run_dir else None
        printer = _ProgressLine() if progress else None
        try:
            stats = run_episode(env, policy, config, recorder, seed=seed, on_progress=printer)
        finally:
            if printer is not None:
                printer.finish()
        summary = {
            "episode": episode,
            "env": getattr(env, "spec_id", None),
            "mode": config.mode,
            "seed": seed,
            **stats.summary(),
            "model": policy_info,
        }
        if recorder is not None:
            for ms in stats.latencies_ms:
                recorder.add_latency(ms)
            summary = recorder.close(summary)
            summary["run_dir"] = str(run_dir)
        summaries.append(summary)
        if stats.interrupted:
            break
    return summaries


def _safe_info(policy: Policy) -> dict[str, Any]:
    try:
        info = policy.info()
    except Exception as exc:  # a remote policy may be unreachable at this moment
        return {"error": str(exc)}
    return {k: v for k, v in info.items() if k not in ("action_layout", "ckpt_config")}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(text)).strip("-") or "game"


class _ProgressLine:
    """One status line: frames, fps, latency, score; refreshed a few times per second."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._last = 0.0
        self._start = time.perf_counter()

    def __call__(self, stats: EpisodeStats) -> None:
        now = time.perf_counter()
        if now - self._last < 0.25:
            return
        self._last = now
        lat = np.median(stats.latencies_ms[-20:]) if stats.latencies_ms else float("nan")
        fps = stats.frames / max(now - self._start, 1e-9)
        line = (
            f"frames {stats.frames}  {fps:5.1f} fps  latency {lat:6.1f} ms  score {stats.score:g}  "
            f"stale {stats.stale}  starved {stats.starved}"
        )
        self.console.print(line, end="\r", highlight=False, soft_wrap=True)

    def finish(self) -> None:
        self.console.print()
