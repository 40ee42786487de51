"""The one episode loop: a policy plays a game through gamepad states, in sync or async mode.

Every command that plays (``play``, ``eval``, ``record``, ``demo``) runs :func:`run_episode`; what
each one keeps of the episode is an :class:`Observer` (the run folder, the dataset writer, the
progress line). The loop owns the timing rules, so they hold everywhere:

* **Frames.** The policy sees the game frame squashed to its :attr:`PolicySpec.image_size` (the
  tower's input size, from the checkpoint) by the one resize in
  :mod:`nitrogen.inference.preprocessing`; a policy with ``image_size=None`` sees the frame as is.
* **Time alignment.** Action ``k`` of a chunk observed at frame ``t`` is meant for frame
  ``t + action_shift + k``. Each frame plays the action of the newest chunk meant for it; a frame
  no chunk covers gets the neutral pad (a *starved* frame).
* **Receding horizon.** ``actions_per_chunk`` (default: the whole chunk) actions of each chunk are
  played before the next one takes over. The next observation is made ``action_shift`` frames
  before that, so the new chunk's first action falls on the frame after the current chunk's last.

``sync`` (the original's behaviour): the game waits (``env.pause()``) while the policy thinks. The
first chunk of an episode starts at its own observation, since nothing else is there to play.

``async`` (the default for live games): the game never waits. The next request is sent when the
current chunk has played ``actions_per_chunk - action_shift`` actions (without
``actions_per_chunk``, as soon as its first action plays). When a chunk arrives after its first frames
have passed, those actions are *stale* and skipped. Embedded games are stepped on a wall clock at
their frame rate, so they behave like live ones.

**Chunking** (``chunking``): ``naive`` switches to a new chunk as it is; ``prefix`` and ``rtc``
(real-time chunking, Black et al. 2025, arXiv 2506.07339; the default in async mode for a policy
whose spec says ``supports_rtc``) send, with each request, the newest chunk's actions on the new
chunk's time grid as a prefix, and the delay ``d``: the actions that will run before the new chunk
arrives, from a running p90 of the measured latency in frames, less the action shift. ``prefix``
freezes those ``d`` actions; ``rtc`` also guides the rest of the overlap towards the old chunk.
``execute`` is the execution horizon ``s``: the next chunk is asked for so that its first action
falls after ``s`` actions of the current chunk (``execute`` defaults to ``actions_per_chunk``).
One chunk lasts until the next arrives only while ``s + d <= H``; past that, frames starve. A
request whose delay is longer than the prefix (the old chunk runs out, and frames starve, before
the new one arrives) is sent without one, as in naive chunking.

**Simulated latency** (``latency_ms``): the game advances one frame per step of simulated time and
never waits; the policy runs synchronously when asked, and its result becomes usable exactly
``ceil(latency_ms * fps / 1000)`` frames after the request frame, however long it really took. A
run is then deterministic for a seed. ``in_flight`` > 1 (simulated mode only) asks every ``s``
frames without waiting for the previous answer (pipelined requests); a pipelined request's prefix
comes from the policy's previous output, which a server has computed by the time the request
reaches it, though the client has not received it yet. In sync mode the game waits
anyway, so ``latency_ms`` only sets :attr:`EpisodeStats.simulated_s` (real time spent, thinking included).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..gamepad import MENU_BUTTONS, NEUTRAL, GamepadState, states_from_chunk
from ..inference.preprocessing import resize_frame
from ..policy import ActionChunk, Policy, PolicySpec

log = logging.getLogger("nitrogen.play")


class StartupPress(BaseModel):
    """One step of a game's start-up sequence: hold ``buttons`` for ``frames`` frames."""

    model_config = ConfigDict(extra="forbid")

    buttons: list[str] = Field(default_factory=list)
    frames: int = Field(1, ge=1)


class PlayConfig(BaseModel):
    """Settings of :func:`run_episode` and :func:`play`; the defaults are those of ``nitrogen play``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["sync", "async"] = "async"
    max_frames: int | None = Field(None, ge=1, description="stop an episode after this many game frames")
    episodes: int = Field(1, ge=1)
    seed: int | None = Field(None, description="seed of episode 0; episode i uses seed + i")
    allow_menu: bool = Field(False, description="let START, GUIDE and BACK through")
    startup: list[StartupPress] = Field(default_factory=list, description="presses before the policy takes over")
    fps: float | None = Field(None, gt=0, description="the game clock (default: the game's own frame rate)")
    realtime: bool | None = Field(
        None,
        description="step an embedded game on its clock, like a live one (default: in async mode only; "
        "sync mode then runs it as fast as the policy allows; a live desktop game is always on its clock)",
    )
    action_shift: int | None = Field(
        None, ge=0, description="frames between an observation and its chunk's first action (default: the policy's)"
    )
    actions_per_chunk: int | None = Field(
        None, ge=1, description="play only the first N actions of each chunk, then switch (default: the whole chunk)"
    )
    explore: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="per-frame chance that a burst of random actions is executed instead of the policy's "
        "(observers still see the policy's action: DART-style noise for recording)",
    )
    explore_frames: tuple[int, int] = Field((4, 16), description="burst length bounds, inclusive")
    video: bool = True
    chunking: Literal["naive", "prefix", "rtc"] | None = Field(
        None,
        description="how a new chunk joins the current one: naive, prefix (frozen delay) or rtc (real-time "
        "chunking); default rtc in async mode for a policy that supports it, naive otherwise",
    )
    execute: int | None = Field(
        None,
        ge=1,
        description="execution horizon s: ask for the next chunk after s actions (default: actions_per_chunk)",
    )
    latency_ms: float | None = Field(
        None, ge=0, le=60_000, description="simulated latency: the game runs in simulated time (see the module doc)"
    )
    in_flight: int = Field(1, ge=1, le=64, description="requests in flight at once (simulated latency only)")
    rtc_beta: float = Field(5.0, ge=0, le=1000, description="RTC's cap on the guidance weight (the paper's 5)")
    rtc_window: int | None = Field(
        None,
        ge=0,
        description="prefix and rtc: send at most d + N of the current chunk's actions, so that RTC guides at "
        "most N actions past the d frozen ones (default: the whole overlap, as in the paper)",
    )
    latency_window: int = Field(20, ge=1, description="chunks whose latency the p90 behind the delay d is taken over")

    @model_validator(mode="after")
    def _burst_bounds(self) -> PlayConfig:
        low, high = self.explore_frames
        if not 1 <= low <= high:
            raise ValueError(f"explore_frames must satisfy 1 <= low <= high, got {self.explore_frames}")
        if self.in_flight > 1 and self.latency_ms is None:
            raise ValueError("in_flight > 1 needs latency_ms (pipelined requests exist in simulated time only)")
        return self


@dataclass
class EpisodeStats:
    """What one episode did; :meth:`summary` is the dict that run folders and tables report."""

    frames: int = 0
    score: float = 0.0
    chunks: int = 0
    executed: int = 0
    stale: int = 0
    starved: int = 0
    explored: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    terminated: bool = False
    chunking: str = "naive"
    """The chunking the episode used (after any fallback)."""
    delays: list[int] = field(default_factory=list)
    """The delay ``d`` sent with each prefixed request."""
    simulated_s: float | None = None
    """With ``latency_ms``: the real time the episode would take, the game's frames plus, in sync
    mode, the pauses while the policy thinks."""

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
            "explored_frames": self.explored,
            "real_fps": self.frames / wall,
            "effective_actions_per_s": self.executed / wall,
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)),
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
            "chunking": self.chunking,
            **({"delay_mean": float(np.mean(self.delays))} if self.delays else {}),
            **({"simulated_s": self.simulated_s} if self.simulated_s is not None else {}),
        }


@dataclass(frozen=True)
class Step:
    """One played frame, as observers see it.

    ``observation`` is the frame the action was played on (full size, as the game gave it);
    ``action`` is what the policy chose for this frame (menu buttons masked), ``executed`` what was
    sent (it differs only during an exploration burst). ``chunk`` counts the episode's chunks from 0
    (-1 for start-up presses and frames before the first chunk); ``substep`` is the action's index
    in its chunk (-1 on a starved frame).
    """

    episode: int
    index: int
    observation: np.ndarray
    action: GamepadState
    executed: GamepadState
    reward: float
    score: float
    chunk: int
    substep: int


class Observer:
    """Receives an episode as it is played; override what you need (every hook defaults to nothing)."""

    def on_episode_start(self, episode: int, seed: int | None) -> None: ...

    def on_chunk(self, latency_ms: float) -> None: ...

    def on_step(self, step: Step) -> None: ...

    def on_episode_end(self, stats: EpisodeStats) -> None: ...


def prepare_frame(frame: np.ndarray, spec: PolicySpec) -> np.ndarray:
    """The frame a policy is given: squashed to its ``image_size`` by the one resize, or as is."""
    return frame if spec.image_size is None else resize_frame(frame, spec.image_size)


def mask_menu(state: GamepadState, allow_menu: bool) -> GamepadState:
    return state if allow_menu else state.without(MENU_BUTTONS)


def startup_states(presses: Sequence[StartupPress]) -> list[GamepadState]:
    """A start-up sequence, described in data, as one pad state per frame."""
    states = []
    for press in presses:
        states.extend([GamepadState(buttons=frozenset(press.buttons))] * press.frames)
    return states


@dataclass
class _Chunk:
    states: list[GamepadState]
    start: int
    """The frame its first action is meant for."""
    index: int
    actions: np.ndarray | None = None
    """The raw ``(H, 25)`` action tensor (the prefix of the next request comes from it)."""


_WARNED_NO_RTC: set[str] = set()


def resolve_chunking(config: PlayConfig, spec: PolicySpec) -> str:
    """The chunking an episode uses: the configured one, or rtc in async mode for a policy that
    supports it; a prefix mode the policy does not support falls back to naive, with one warning."""
    wanted = config.chunking or ("rtc" if config.mode == "async" and spec.supports_rtc else "naive")
    if wanted != "naive" and not spec.supports_rtc:
        if spec.name not in _WARNED_NO_RTC:
            _WARNED_NO_RTC.add(spec.name)
            log.warning("policy %s does not support %s chunking; playing with naive chunking", spec.name, wanted)
        return "naive"
    return wanted


class _Planner:
    """What each request carries under real-time chunking: the prefix, and the delay ``d``.

    ``d`` is the running p90 of the measured latency in frames (request frame to arrival frame,
    over the last ``latency_window`` chunks), less the action shift: the actions of the new chunk
    that run before it arrives. The prefix is the newest chunk's actions from the new chunk's first
    frame on; its length ``k`` is what is left of that chunk (the paper's ``H - s``).
    """

    def __init__(self, ep: _Episode, mode: str, *, fixed_delay: int | None = None):
        self.ep, self.mode, self.fixed_delay = ep, mode, fixed_delay
        self.latency_frames: deque[int] = deque(maxlen=ep.config.latency_window)

    def measured(self, frames: int) -> None:
        self.latency_frames.append(max(0, int(frames)))

    def delay(self) -> int:
        if self.fixed_delay is not None:
            return self.fixed_delay
        if not self.latency_frames:
            return 0
        p90 = float(np.percentile(np.asarray(self.latency_frames, dtype=np.float64), 90))
        return max(0, math.ceil(p90 - 1e-9) - self.ep.shift)

    def request(self, observed_at: int, computed: _Chunk | None = None) -> dict[str, Any]:
        """The keyword arguments of ``policy.predict`` for a frame observed at ``observed_at``.

        The prefix comes from the newest chunk received, or from ``computed``, the policy's own
        previous output when it is newer (pipelined requests: what a server holds by the time the
        next request reaches it, while the client has not received it yet).
        """
        ep = self.ep
        base = computed or ep.pending or ep.current
        if self.mode == "naive" or base is None or base.actions is None:
            return {}
        offset = observed_at + ep.shift - base.start  # the new chunk's action 0 is base's action `offset`
        if offset < 0 or offset >= len(base.actions):
            return {}
        prefix = np.ascontiguousarray(base.actions[offset:], dtype=np.float32)
        d = self.delay()
        if d > len(prefix):
            # The new chunk arrives after the newest one has run out, with starved frames between:
            # no action of the prefix would run from the new chunk, and guiding the new chunk
            # towards a plan that old only pulls it away from its own observation (the paper needs
            # d <= H - s). Ask as naive chunking does. At d == k the old chunk plays up to the new
            # one's arrival, and freezing all k actions joins the new chunk to it.
            return {}
        if ep.config.rtc_window is not None:
            prefix = prefix[: d + ep.config.rtc_window]  # a shorter soft window: RTC's mask ends with the prefix
        ep.stats.delays.append(d)
        return {"prefix": prefix, "delay": d, "chunking": self.mode, "beta": ep.config.rtc_beta}


class _Explorer:
    """DART-style noise: now and then a burst of random actions replaces the executed one.

    One random choice is held for a whole burst; bursts start with chance ``p`` per frame and last
    ``low..high`` frames, both drawn from a generator seeded by the episode seed.
    """

    def __init__(self, p: float, bounds: tuple[int, int], seed: int | None, env: Any) -> None:
        from .agents import RandomAgent

        self.p, (self.low, self.high), self.env = p, bounds, env
        self.noise = RandomAgent(seed, min_hold=self.high, max_hold=self.high)
        self.rng = np.random.default_rng(None if seed is None else [seed, 1])
        self.burst = 0

    def __call__(self, frame: np.ndarray, state: GamepadState) -> tuple[GamepadState, bool]:
        if self.burst == 0 and self.rng.random() < self.p:
            self.noise.reset(self.env)
            self.burst = int(self.rng.integers(self.low, self.high + 1))
        if self.burst == 0:
            return state, False
        self.burst -= 1
        return self.noise.act(self.env, frame), True


class _Episode:
    """The state of one episode being played: the frame, the stats, the chunks in play."""

    def __init__(self, env: Any, policy: Policy, config: PlayConfig, observers: Sequence[Observer], episode: int):
        self.env, self.policy, self.config, self.observers, self.episode = env, policy, config, observers, episode
        self.spec = policy.spec
        self.shift = config.action_shift if config.action_shift is not None else self.spec.action_shift
        self.stats = EpisodeStats()
        self.frame: np.ndarray | None = None
        self.current: _Chunk | None = None
        self.pending: _Chunk | None = None
        self.explorer: _Explorer | None = None
        self.stats.chunking = resolve_chunking(config, self.spec)
        fps = config.fps or float(getattr(env, "fps", 60.0))
        self.fps = fps
        self.latency_frames = None if config.latency_ms is None else math.ceil(config.latency_ms * fps / 1000 - 1e-9)
        """Simulated latency in frames: a result is usable this many frames after its request frame."""

    @property
    def per_chunk(self) -> int:
        """Actions of each chunk played before the next takes over: the execution horizon ``s``."""
        s = self.config.execute or self.config.actions_per_chunk
        return min(s or self.spec.action_horizon, self.spec.action_horizon)

    @property
    def replan(self) -> bool:
        """Whether a receding horizon (``execute`` or ``actions_per_chunk``) is set."""
        return (self.config.execute or self.config.actions_per_chunk) is not None

    def observe(self) -> np.ndarray:
        return prepare_frame(self.frame, self.spec)

    def arrived(self, chunk: ActionChunk, observed_at: int, latency_ms: float, *, first_now: bool = False) -> None:
        """A chunk observed at ``observed_at`` is ready; it takes over at its start frame."""
        self.stats.latencies_ms.append(latency_ms)
        for o in self.observers:
            o.on_chunk(latency_ms)
        start = observed_at if first_now else observed_at + self.shift
        self.pending = _Chunk(states_from_chunk(chunk.action_tensor), start, self.stats.chunks, chunk.action_tensor)
        self.stats.chunks += 1

    def promote(self) -> None:
        """The pending chunk takes over once its start frame has come; actions already past are stale."""
        f = self.stats.frames
        if self.pending is not None and f >= self.pending.start:
            self.current, self.pending = self.pending, None
            self.stats.stale += min(f - self.current.start, len(self.current.states))

    def play_frame(self) -> bool:
        """Play one frame: the newest chunk's action for it, or neutral. True when the episode ends."""
        self.promote()
        f = self.stats.frames
        cur = self.current
        k = f - cur.start if cur is not None else -1
        if cur is not None and 0 <= k < len(cur.states):
            self.stats.executed += 1
            return self.apply(cur.states[k], chunk=cur.index, substep=k)
        self.stats.starved += 1
        return self.apply(NEUTRAL, chunk=cur.index if cur is not None else -1, substep=-1)

    def apply(self, state: GamepadState, *, chunk: int, substep: int) -> bool:
        action = mask_menu(state, self.config.allow_menu)
        executed, explored = (action, False) if self.explorer is None else self.explorer(self.frame, action)
        observation = self.frame
        self.frame, reward, terminated, truncated, _ = self.env.step(executed)
        stats = self.stats
        stats.frames += 1
        stats.score += float(reward)
        stats.explored += explored
        step = Step(
            self.episode, stats.frames - 1, observation, action, executed, float(reward), stats.score, chunk, substep
        )
        for o in self.observers:
            o.on_step(step)
        stats.terminated = bool(terminated or truncated)
        limit = self.config.max_frames is not None and stats.frames >= self.config.max_frames
        return stats.terminated or limit


def run_episode(
    env: Any,
    policy: Policy,
    config: PlayConfig,
    observers: Sequence[Observer] = (),
    *,
    seed: int | None = None,
    episode: int = 0,
) -> EpisodeStats:
    """Play one episode; returns its stats. Ctrl-C ends it early with ``interrupted`` set.

    ``env`` is a :class:`~nitrogen.envs.GamepadEnv` or anything with the same ``reset``/``step``
    (``pause``/``resume``, when it has them, stop a live game while a sync policy thinks).
    """
    ep = _Episode(env, policy, config, observers, episode)
    for o in observers:
        o.on_episode_start(episode, seed)
    started = time.perf_counter()
    try:
        ep.frame, _ = env.reset(seed=seed)
        policy.reset()
        if config.explore > 0:
            ep.explorer = _Explorer(config.explore, config.explore_frames, seed, env)
        done = False
        for k, state in enumerate(startup_states(config.startup)):
            done = ep.apply(state, chunk=-1, substep=k)
            if done:
                break
        if not done:
            (_run_sync if config.mode == "sync" else _run_async)(ep)
    except KeyboardInterrupt:
        ep.stats.interrupted = True
    finally:
        ep.stats.wall_s = time.perf_counter() - started
        if config.latency_ms is not None:
            thinking = ep.stats.chunks * config.latency_ms / 1000 if config.mode == "sync" else 0.0
            ep.stats.simulated_s = ep.stats.frames / ep.fps + thinking
    for o in observers:
        o.on_episode_end(ep.stats)
    return ep.stats


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


def _game_clock(ep: _Episode) -> _Clock:
    if ep.config.latency_ms is not None:
        return _Clock(ep.fps, False)  # simulated time: a frame is a step, never a wait
    live = bool(getattr(ep.env, "live", False))  # a desktop game: one action per frame of its clock
    realtime = ep.config.realtime if ep.config.realtime is not None else (ep.config.mode == "async" or live)
    return _Clock(ep.fps, realtime)


def _run_sync(ep: _Episode) -> None:
    """Observe (the game paused), then play until the next observation is due."""
    clock = _game_clock(ep)
    pause, resume = getattr(ep.env, "pause", None), getattr(ep.env, "resume", None)
    planner = _Planner(ep, ep.stats.chunking, fixed_delay=0)  # the game waits: nothing runs before arrival
    next_observation = ep.stats.frames
    while True:
        ep.promote()
        if ep.stats.frames >= next_observation:
            observed_at = ep.stats.frames
            t0 = time.perf_counter()
            if pause is not None:
                pause()  # a live game waits for the policy, as in the original
            try:
                chunk = ep.policy.predict(ep.observe(), **planner.request(observed_at))
            finally:
                if resume is not None:
                    resume()
            first = ep.current is None
            ep.arrived(chunk, observed_at, (time.perf_counter() - t0) * 1e3, first_now=first)
            clock.restart()  # the game was paused while the policy thought
            # The next chunk's first action lands right after this one's `per_chunk` actions; it
            # is not asked for before this one has taken over (when per_chunk < shift).
            segment_end = ep.pending.start + ep.per_chunk
            next_observation = max(segment_end - ep.shift, ep.pending.start, observed_at + 1)
        if ep.play_frame():
            return
        clock.tick()


class _Predictor:
    """Runs ``policy.predict`` in a background thread; the newest result is picked up by the loop."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._request: tuple[np.ndarray, int, dict[str, Any]] | None = None
        self._result: tuple[ActionChunk, int, float] | None = None
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._closed = False
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="nitrogen-predict", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return int(self.busy)

    def submit(self, frame: np.ndarray, frame_index: int, kwargs: dict[str, Any] | None = None) -> None:
        with self._cv:
            self._request = (frame, frame_index, kwargs or {})
            self.busy = True
            self._cv.notify_all()

    def poll(self, frame_index: int = 0) -> tuple[ActionChunk, int, float] | None:
        with self._cv:
            if self._error is not None:
                raise self._error
            result, self._result = self._result, None
            if result is not None:
                self.busy = self._request is not None
            return result

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                frame, index, kwargs = self._request
                self._request = None
            started = time.perf_counter()
            try:
                chunk = self.policy.predict(frame, **kwargs)
            except BaseException as exc:  # surfaced to the loop on its next poll
                with self._cv:
                    self._error = exc
                return
            with self._cv:
                self._result = (chunk, index, (time.perf_counter() - started) * 1e3)
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)


class _SimulatedPredictor:
    """Simulated latency: the policy runs synchronously when asked, and its result becomes usable
    exactly ``delay_frames`` frames after the request frame (in request order)."""

    def __init__(self, policy: Policy, delay_frames: int):
        self.policy, self.delay_frames = policy, delay_frames
        self._queue: deque[tuple[int, ActionChunk, int, float]] = deque()  # (usable at, chunk, request frame, ms)

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def newest(self) -> tuple[ActionChunk, int] | None:
        """The newest result computed but not yet usable, with its request frame (or None)."""
        if not self._queue:
            return None
        _, chunk, requested, _ = self._queue[-1]
        return chunk, requested

    def submit(self, frame: np.ndarray, frame_index: int, kwargs: dict[str, Any] | None = None) -> None:
        started = time.perf_counter()
        chunk = self.policy.predict(frame, **(kwargs or {}))
        compute_ms = (time.perf_counter() - started) * 1e3
        self._queue.append((frame_index + self.delay_frames, chunk, frame_index, compute_ms))

    def poll(self, frame_index: int) -> tuple[ActionChunk, int, float] | None:
        if self._queue and self._queue[0][0] <= frame_index:
            _, chunk, requested, compute_ms = self._queue.popleft()
            return chunk, requested, compute_ms
        return None

    def close(self) -> None:
        self._queue.clear()


def _run_async(ep: _Episode) -> None:
    """The game advances on its clock (or in simulated time); chunks switch in at their frame as they arrive.

    One request is in flight at a time (``in_flight`` in simulated time). Without a receding
    horizon the next request goes out once the newest chunk has started; with one, so that the
    next chunk would start right after ``per_chunk`` actions of this one. Pipelined requests
    (``in_flight > 1``) go out every ``per_chunk`` frames instead.
    """
    clock = _game_clock(ep)
    simulated = ep.latency_frames is not None
    predictor: Any = _SimulatedPredictor(ep.policy, ep.latency_frames) if simulated else _Predictor(ep.policy)
    planner = _Planner(ep, ep.stats.chunking)
    pipelined = ep.config.in_flight > 1

    def request(f: int) -> dict[str, Any]:
        computed = predictor.newest() if pipelined else None  # pipelining exists in simulated time only
        if computed is None:
            return planner.request(f)
        chunk, observed_at = computed
        return planner.request(f, _Chunk([], observed_at + ep.shift, -1, chunk.action_tensor))

    try:
        predictor.submit(ep.observe(), ep.stats.frames, request(ep.stats.frames))
        next_request: int | None = ep.stats.frames + ep.per_chunk if pipelined else None
        clock.restart()

        def collect() -> None:
            nonlocal next_request
            arrived = predictor.poll(ep.stats.frames)
            if arrived is None:
                return
            chunk, observed_at, latency_ms = arrived
            planner.measured(ep.stats.frames - observed_at)
            ep.arrived(chunk, observed_at, latency_ms)
            if not pipelined:
                start = ep.pending.start
                next_request = max(start + ep.per_chunk - ep.shift, start) if ep.replan else start

        while True:
            ep.promote()
            collect()
            due = next_request is not None and ep.stats.frames >= next_request
            if due and predictor.in_flight < ep.config.in_flight:
                f = ep.stats.frames
                predictor.submit(ep.observe(), f, request(f))
                next_request = f + ep.per_chunk if pipelined else None
                if simulated:
                    collect()  # a result with no latency is usable on its own request frame
            if ep.play_frame():
                return
            clock.tick()
    finally:
        predictor.close()


class SwitchStats(Observer):
    """How smooth the played actions are at chunk switches, against inside a chunk.

    For each pair of consecutive frames both played from a chunk, the mean absolute change of the
    four stick axes (each in [-1, 1]) and the number of physical buttons (and triggers) that flip;
    pairs whose two frames come from different chunks are *switches*, the others *inside*.
    """

    def __init__(self) -> None:
        self.switch_stick: list[float] = []
        self.switch_flips: list[int] = []
        self.inside_stick: list[float] = []
        self.inside_flips: list[int] = []
        self._last: tuple[int, GamepadState] | None = None

    def on_episode_start(self, episode: int, seed: int | None) -> None:
        self._last = None

    def on_step(self, step: Step) -> None:
        if step.substep < 0 or step.chunk < 0:
            self._last = None
            return
        state = step.action
        if self._last is not None:
            chunk, prev = self._last
            stick = np.abs(np.subtract((*state.left_stick, *state.right_stick), (*prev.left_stick, *prev.right_stick)))
            flips = len(state.physical_buttons() ^ prev.physical_buttons())
            if chunk == step.chunk:
                self.inside_stick.append(float(stick.mean()))
                self.inside_flips.append(flips)
            else:
                self.switch_stick.append(float(stick.mean()))
                self.switch_flips.append(flips)
        self._last = (step.chunk, state)

    def summary(self) -> dict[str, float | int]:
        """Means over the pairs seen so far (NaN where there were none), and the pair counts."""

        def mean(values: Sequence[float]) -> float:
            return float(np.mean(values)) if len(values) else float("nan")

        return {
            "switches": len(self.switch_stick),
            "switch_stick": mean(self.switch_stick),
            "switch_flips": mean(self.switch_flips),
            "inside_stick": mean(self.inside_stick),
            "inside_flips": mean(self.inside_flips),
        }


class ProgressLine(Observer):
    """One status line on stderr: frames, fps, latency, score; refreshed a few times per second."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._last = 0.0
        self._start = time.perf_counter()
        self._frames, self._score = 0, 0.0
        self._latencies: list[float] = []

    def on_episode_start(self, episode: int, seed: int | None) -> None:
        self._start, self._frames, self._score, self._latencies = time.perf_counter(), 0, 0.0, []

    def on_chunk(self, latency_ms: float) -> None:
        self._latencies.append(latency_ms)

    def on_step(self, step: Step) -> None:
        self._frames, self._score = step.index + 1, step.score
        now = time.perf_counter()
        if now - self._last < 0.25:
            return
        self._last = now
        lat = np.median(self._latencies[-20:]) if self._latencies else float("nan")
        fps = self._frames / max(now - self._start, 1e-9)
        line = f"frames {self._frames}  {fps:5.1f} fps  latency {lat:6.1f} ms  score {self._score:g}"
        self.console.print(line, end="\r", highlight=False, soft_wrap=True)

    def on_episode_end(self, stats: EpisodeStats) -> None:
        self.console.print()


class RunFolderObserver(Observer):
    """Writes each episode's run folder (videos, ``actions.jsonl``, ``episode.json``) under ``root``."""

    def __init__(self, root: Path, env: Any, policy: Policy, config: PlayConfig) -> None:
        self.root, self.env, self.policy, self.config = Path(root), env, policy, config
        self.recorder: Any = None
        self.run_dir: Path | None = None
        self.summary: dict[str, Any] | None = None

    def on_episode_start(self, episode: int, seed: int | None) -> None:
        from ..rundir.run_folder import RunRecorder, new_run_dir

        self.run_dir = new_run_dir(self.root, f"{_slug(getattr(self.env, 'spec_id', 'game'))}-ep{episode}")
        self.recorder = RunRecorder(self.run_dir, fps=float(getattr(self.env, "fps", 60.0)), video=self.config.video)
        self.summary = None

    def on_chunk(self, latency_ms: float) -> None:
        self.recorder.add_latency(latency_ms)

    def on_step(self, step: Step) -> None:
        self.recorder.record(step.observation, step.action, step=step.chunk, substep=step.substep)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Close the run folder with the episode's summary; returns what ``episode.json`` holds."""
        written = self.recorder.close(summary)
        written["run_dir"] = str(self.run_dir)
        return written


def play(
    env: Any,
    policy: Policy,
    config: PlayConfig | None = None,
    *,
    out_dir: Path | None = None,
    progress: bool = False,
    observers: Sequence[Observer] = (),
) -> list[dict[str, Any]]:
    """Play ``config.episodes`` episodes, recording each into its own folder under ``out_dir``."""
    config = config or PlayConfig()
    summaries = []
    policy_info = policy_summary(policy)
    folder = RunFolderObserver(out_dir, env, policy, config) if out_dir else None
    extra = [*observers, *([ProgressLine()] if progress else [])]
    for episode in range(config.episodes):
        seed = None if config.seed is None else config.seed + episode
        stats = run_episode(env, policy, config, [*([folder] if folder else []), *extra], seed=seed, episode=episode)
        summary = {
            "episode": episode,
            "env": getattr(env, "spec_id", None),
            "mode": config.mode,
            "seed": seed,
            **stats.summary(),
            "model": policy_info,
        }
        if folder is not None:
            summary = folder.finish(summary)
        summaries.append(summary)
        if stats.interrupted:
            break
    return summaries


def policy_summary(policy: Policy) -> dict[str, Any]:
    """The policy's ``info()`` without the bulky layout tables, for run summaries."""
    try:
        info = policy.info()
    except Exception as exc:  # a remote policy may be unreachable at this moment
        return {"error": str(exc)}
    return {k: v for k, v in info.items() if k not in ("action_layout", "ckpt_config")}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(text)).strip("-") or "game"
