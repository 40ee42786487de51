"""The play loop on real ALE Breakout frames, with the tiny golden checkpoint and replayed policies."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from nitrogen import InferenceSession
from nitrogen.actions import BUTTON_INDEX
from nitrogen.envs import make_env
from nitrogen.inference.engine import PolicyEngine
from nitrogen.runtime.loop import PlayConfig, StartupPress, play
from nitrogen.runtime.sources import DelayedPolicy, ReplayPolicy
from nitrogen.serving.client import ModelClient
from nitrogen.serving.server import InferenceServer, ServerConfig


def _frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "actions.jsonl").read_text().splitlines()]


def _actions(pressed: str | None, n: int = 90) -> np.ndarray:
    actions = np.zeros((n, 25), np.float32)
    actions[:, 21:] = 0.5
    if pressed:
        actions[:, BUTTON_INDEX[pressed]] = 1.0
    return actions


@pytest.fixture()
def breakout():
    env = make_env("ale:Breakout")
    yield env
    env.close()


def _check_run(summary: dict, frames: int) -> list[dict]:

    run_dir = Path(summary["run_dir"])
    assert summary["frames"] == frames
    assert _frames(run_dir / "clean.mp4") == frames
    assert _frames(run_dir / "debug.mp4") == frames
    lines = _lines(run_dir)
    assert len(lines) == frames
    assert all("START" not in line["state"]["buttons"] for line in lines)
    episode = json.loads((run_dir / "episode.json").read_text())
    assert episode["frames"] == frames and "latency_p50_ms" in episode
    return lines


def test_breakout_300_frames_in_process(breakout, tiny_ckpt, tmp_path):
    policy = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=0)
    [summary] = play(breakout, policy, PlayConfig(mode="sync", max_frames=300, seed=1), out_dir=tmp_path)
    lines = _check_run(summary, 300)
    assert summary["chunks"] == 17  # ceil(300 / 18)
    assert [line["substep"] for line in lines[:19]] == [*range(18), 0]


def test_breakout_300_frames_through_a_server(breakout, tiny_ckpt, tmp_path):
    engine = PolicyEngine.from_checkpoint(tiny_ckpt, device="cpu")
    with InferenceServer(engine, ServerConfig(port=0)) as server, ModelClient(server.address) as policy:
        [summary] = play(breakout, policy, PlayConfig(mode="sync", max_frames=300, seed=1), out_dir=tmp_path)
    _check_run(summary, 300)
    assert summary["model"]["num_steps"] == 4


def test_menu_buttons_are_masked_unless_allowed(breakout, tmp_path):
    config = PlayConfig(mode="sync", max_frames=40, video=False)
    [masked] = play(breakout, ReplayPolicy(_actions("START")), config, out_dir=tmp_path / "masked")
    assert all("START" not in line["state"]["buttons"] for line in _lines(Path(masked["run_dir"])))
    allowed = config.model_copy(update={"allow_menu": True})
    [free] = play(breakout, ReplayPolicy(_actions("START")), allowed, out_dir=tmp_path / "free")
    assert all("START" in line["state"]["buttons"] for line in _lines(Path(free["run_dir"])))


def test_startup_sequence_is_played_first(breakout, tmp_path):
    config = PlayConfig(
        mode="sync",
        max_frames=30,
        video=False,
        startup=[StartupPress(buttons=["SOUTH"], frames=3), StartupPress(frames=2)],
    )
    [summary] = play(breakout, ReplayPolicy(_actions(None)), config, out_dir=tmp_path)
    lines = _lines(Path(summary["run_dir"]))
    assert [line["state"]["buttons"] for line in lines[:5]] == [["SOUTH"]] * 3 + [[]] * 2
    assert [line["step"] for line in lines[:6]] == [-1] * 5 + [0]


def test_async_mode_keeps_the_game_running_with_a_slow_policy(breakout, tmp_path):
    slow = DelayedPolicy(ReplayPolicy(_actions("SOUTH", n=2000)), delay_s=0.1)
    fps = 120.0
    config = PlayConfig(mode="async", max_frames=240, fps=fps, video=False, action_shift=0)
    [fast] = play(breakout, slow, config, out_dir=tmp_path / "async")
    # The game clock never waited for the policy: about 2 s of game time took about 2 s.
    assert fast["real_fps"] > 0.8 * fps
    assert fast["stale_actions"] > 0 and fast["executed_actions"] > 0
    assert fast["executed_actions"] + fast["starved_frames"] == 240
    lines = _lines(Path(fast["run_dir"]))
    assert len(lines) == 240
    sync = config.model_copy(update={"mode": "sync", "realtime": True})
    [paused] = play(breakout, slow, sync, out_dir=tmp_path / "sync")
    # In sync mode every chunk waits 100 ms: the game runs far slower than its clock.
    assert paused["real_fps"] < 0.6 * fps and paused["stale_actions"] == 0


def test_ctrl_c_finishes_the_files(breakout, tmp_path):
    class Interrupting(ReplayPolicy):
        def predict(self, frame):
            if self.position >= 36:
                raise KeyboardInterrupt
            return super().predict(frame)

    [summary] = play(breakout, Interrupting(_actions(None)), PlayConfig(mode="sync", episodes=3), out_dir=tmp_path)
    assert summary["interrupted"] and summary["frames"] == 36

    assert _frames(Path(summary["run_dir"]) / "clean.mp4") == 36


def test_sync_mode_can_replan_after_a_few_actions(breakout, tmp_path):
    config = PlayConfig(mode="sync", max_frames=40, video=False, actions_per_chunk=4)
    [summary] = play(breakout, ReplayPolicy(_actions(None, n=400)), config, out_dir=tmp_path)
    assert summary["chunks"] == 10 and summary["executed_actions"] == 40
    assert [line["substep"] for line in _lines(Path(summary["run_dir"]))] == [0, 1, 2, 3] * 10


class _Counting:
    """Wraps a real env and stamps each frame's index into its first pixels, so a policy can tell
    which frame it was shown (even from the async loop's predictor thread)."""

    def __init__(self, env):
        self.env, self.spec_id, self.fps, self.stepped = env, env.spec_id, env.fps, 0

    def _stamp(self, frame):
        frame = frame.copy()
        frame[0, 0, 0], frame[0, 1, 0] = self.stepped % 256, self.stepped // 256
        return frame

    def reset(self, seed=None):
        self.stepped = 0
        frame, info = self.env.reset(seed=seed)
        return self._stamp(frame), info

    def step(self, state):
        self.stepped += 1
        frame, *rest = self.env.step(state)
        return (self._stamp(frame), *rest)


class _Tagged:
    """A policy whose action k of chunk c carries (c, k) in the left stick, and which notes the
    frame each chunk was observed at."""

    def __init__(self, env: _Counting, *, horizon: int, shift: int):
        from nitrogen.policy import PolicySpec

        self.env, self.observed = env, []
        self.spec = PolicySpec(name="tagged", kind="replay", action_horizon=horizon, action_shift=shift)

    def predict(self, frame):
        from nitrogen.policy import ActionChunk

        c = len(self.observed)
        self.observed.append(int(frame[0, 0, 0]) + 256 * int(frame[0, 1, 0]))
        actions = _actions(None, n=self.spec.action_horizon)
        for k in range(self.spec.action_horizon):
            actions[k, 21:23] = ((c * 100 + k) / 10000 + 1) / 2  # left stick (x, y) = (c*100+k)/10000
        return ActionChunk.from_action_tensor(actions)

    def reset(self):
        self.observed = []

    def info(self):
        return {"policy": "tagged"}

    def close(self):
        pass


@pytest.mark.parametrize(("per_chunk", "shift"), [(3, 2), (4, 0), (2, 3), (6, 1)])
def test_sync_mode_plays_each_action_on_its_frame(breakout, tmp_path, per_chunk, shift):
    """Action k of a chunk observed at frame t plays on frame t + shift + k (the first chunk: t + k),
    each chunk plays `per_chunk` actions, and the next observation is made `shift` frames early."""
    env = _Counting(breakout)
    policy = _Tagged(env, horizon=6, shift=shift)
    config = PlayConfig(mode="sync", max_frames=40, video=False, actions_per_chunk=per_chunk)
    [summary] = play(env, policy, config, out_dir=tmp_path)
    lines = _lines(Path(summary["run_dir"]))
    starts = [policy.observed[0]] + [t + shift for t in policy.observed[1:]]
    for f, line in enumerate(lines):
        c, k = divmod(round(line["state"]["left_stick"][0] * 10000), 100)
        assert (line["step"], line["substep"]) == (c, k), f
        assert f == starts[c] + k, (f, c, k)  # time-aligned
    played = [sum(1 for line in lines if line["step"] == c) for c in range(len(starts))]
    assert played[0] == max(per_chunk, shift + 1)  # the first chunk starts on its own frame
    assert all(n == max(per_chunk, min(shift, 6)) for n in played[1:-2])  # receding horizon
    assert summary["stale_actions"] == 0 and summary["starved_frames"] == 0


def test_async_mode_plays_only_time_aligned_actions(breakout, tmp_path):
    env = _Counting(breakout)
    policy = DelayedPolicy(_Tagged(env, horizon=18, shift=2), delay_s=0.03)
    config = PlayConfig(mode="async", max_frames=150, fps=240.0, video=False, actions_per_chunk=6)
    [summary] = play(env, policy, config, out_dir=tmp_path)
    lines = _lines(Path(summary["run_dir"]))
    observed = policy.policy.observed
    assert summary["chunks"] >= 2
    for f, line in enumerate(lines):
        if line["substep"] < 0:
            continue  # a starved frame: no chunk covered it
        c, k = divmod(round(line["state"]["left_stick"][0] * 10000), 100)
        assert f == observed[c] + 2 + k, (f, c, k)  # the action meant for this very frame
    assert summary["executed_actions"] + summary["starved_frames"] == 150


def test_a_run_folder_replays_exactly_as_recorded(breakout, tmp_path):
    """Play (async, with a slow policy, so some frames are starved), then replay the run folder:
    the same pad state on every frame, sticks and buttons."""
    from nitrogen.runtime.sources import make_policy

    rng = np.random.default_rng(0)
    actions = rng.random((400, 25)).astype(np.float32)
    slow = DelayedPolicy(ReplayPolicy(actions), delay_s=0.02)
    config = PlayConfig(mode="async", max_frames=120, fps=240.0, video=False)
    [first] = play(breakout, slow, config, out_dir=tmp_path / "first")
    replay = make_policy(f"replay:{first['run_dir']}")
    assert replay.spec.kind == "replay" and replay.spec.image_size is None
    again = config.model_copy(update={"mode": "sync"})
    [second] = play(breakout, replay, again, out_dir=tmp_path / "second")
    recorded = [line["state"] for line in _lines(Path(first["run_dir"]))]
    replayed = [line["state"] for line in _lines(Path(second["run_dir"]))]
    assert len(recorded) == 120 and replayed == recorded
    assert len({json.dumps(s) for s in recorded}) > 10  # varied sticks and buttons, not all neutral


# ------------------------------------------------------------------------- chunking and simulated latency


class _PrefixTagged(_Tagged):
    """:class:`_Tagged` that says it supports RTC and notes what each request carried."""

    def __init__(self, env, *, horizon: int, shift: int):
        super().__init__(env, horizon=horizon, shift=shift)
        self.spec = self.spec.model_copy(update={"supports_rtc": True})
        self.requests: list[dict] = []
        self.chunks: list[np.ndarray] = []

    def predict(self, frame, **kwargs):
        self.requests.append(kwargs)
        chunk = super().predict(frame)
        self.chunks.append(chunk.action_tensor)
        return chunk


class _Steps:
    def __init__(self):
        self.steps = []

    def on_episode_start(self, episode, seed): ...

    def on_chunk(self, latency_ms): ...

    def on_episode_end(self, stats): ...

    def on_step(self, step):
        self.steps.append((step.chunk, step.substep))


@pytest.mark.parametrize(("latency_ms", "shift", "execute"), [(100, 2, 3), (50, 0, 3), (200, 0, 6), (0, 1, 4)])
def test_simulated_latency_switches_on_the_frame_the_latency_implies(breakout, latency_ms, shift, execute):
    """A result is usable exactly ceil(L * 60 / 1000) frames after its request frame: the chunk takes
    over on that frame, at the action meant for it, and the request carries the newest chunk's
    actions on the new grid with d = latency - shift frozen."""
    from nitrogen.runtime.loop import run_episode

    env = _Counting(breakout)
    policy = _PrefixTagged(env, horizon=18, shift=shift)
    steps = _Steps()
    config = PlayConfig(mode="async", max_frames=120, chunking="rtc", execute=execute, latency_ms=latency_ms)
    stats = run_episode(env, policy, config, [steps])
    lag = round(latency_ms * 60 / 1000)
    first_frame = {}
    for f, (c, k) in enumerate(steps.steps):
        if k >= 0 and c not in first_frame:
            first_frame[c] = (f, k)
    assert len(first_frame) >= 5
    for c, (f, k) in first_frame.items():
        observed = policy.observed[c]
        assert f == max(observed + lag, observed + shift), (c, f, observed)
        assert k == f - observed - shift
    assert stats.chunking == "rtc" and policy.requests[0] == {}
    for c in range(2, len(policy.requests)):
        sent = policy.requests[c]
        base = policy.chunks[c - 1]
        offset = policy.observed[c] + shift - (policy.observed[c - 1] + shift)
        d = max(lag - shift, 0)
        if d > 18 - offset:
            assert sent == {}  # the newest chunk runs out before this one arrives: nothing to join
            continue
        np.testing.assert_array_equal(sent["prefix"], base[offset:])
        assert sent["delay"] == d and sent["chunking"] == "rtc"


@pytest.mark.parametrize("shift", [0, 2])
def test_pipelined_requests_take_the_prefix_from_the_policys_previous_output(breakout, shift):
    """Two in flight at 200 ms (12 frames), one request every 6: when a request goes out, the
    previous one's chunk is computed but not received. Its actions on the new grid are the prefix,
    with ``d = 12 - shift`` frozen; with no shift that is all of them (d == k: the old chunk plays
    right up to the new one's arrival), and the prefix is still sent. No frame starves after the
    first chunk."""
    from nitrogen.runtime.loop import run_episode

    env = _Counting(breakout)
    policy = _PrefixTagged(env, horizon=18, shift=shift)
    steps = _Steps()
    config = PlayConfig(mode="async", max_frames=150, chunking="prefix", execute=6, latency_ms=200, in_flight=2)
    stats = run_episode(env, policy, config, [steps])
    assert policy.requests[0] == {} and len(policy.requests) >= 20
    d = 12 - shift
    with_prefix = 0
    for c in range(1, len(policy.requests)):
        sent = policy.requests[c]
        offset = policy.observed[c] - policy.observed[c - 1]
        assert offset == 6
        if c == 1:  # sent before the first arrival, so before any latency is measured: d = 0
            assert sent["delay"] == 0
        else:
            assert sent["delay"] == d
        np.testing.assert_array_equal(sent["prefix"], policy.chunks[c - 1][offset:])
        with_prefix += 1
    assert with_prefix == len(policy.requests) - 1
    assert stats.starved == 12  # only the frames before the first chunk arrives


def test_rtc_window_caps_the_prefix_past_the_frozen_actions(breakout):
    from nitrogen.runtime.loop import run_episode

    env = _Counting(breakout)
    policy = _PrefixTagged(env, horizon=18, shift=0)
    config = PlayConfig(mode="async", max_frames=60, chunking="rtc", execute=3, latency_ms=50, rtc_window=2)
    run_episode(env, policy, config)
    sent = [r for r in policy.requests if r]
    assert len(sent) >= 5
    for r in sent:  # d = 3 frames of latency; the chunk's remaining 15 actions are cut to d + 2
        assert r["delay"] == 3 and r["prefix"].shape == (5, policy.chunks[0].shape[1])


def test_simulated_latency_is_deterministic_for_a_seed(breakout, tiny_ckpt):
    from nitrogen.runtime.loop import run_episode

    runs = []
    for _ in range(2):
        policy = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=3)
        steps = _Steps()
        config = PlayConfig(mode="async", max_frames=45, chunking="rtc", execute=3, latency_ms=100)
        stats = run_episode(breakout, policy, config, [steps], seed=5)
        runs.append((steps.steps, stats.score, stats.stale, stats.starved, stats.delays))
    assert runs[0] == runs[1]
    assert runs[0][4] and all(d == 5 for d in runs[0][4][1:])  # 6 frames of latency less the shift of 1


def test_a_policy_without_rtc_falls_back_to_naive_with_one_warning(breakout, caplog):
    from nitrogen.runtime import loop

    loop._WARNED_NO_RTC.discard("replay:array")
    policy = ReplayPolicy(_actions("SOUTH", n=400))
    config = PlayConfig(mode="async", max_frames=20, chunking="rtc", latency_ms=50, episodes=2)
    with caplog.at_level("WARNING", logger="nitrogen.play"):
        summaries = play(breakout, policy, config)
    assert [s["chunking"] for s in summaries] == ["naive", "naive"]
    assert len([r for r in caplog.records if "naive chunking" in r.getMessage()]) == 1
    assert PlayConfig().chunking is None and loop.resolve_chunking(PlayConfig(), policy.spec) == "naive"


def test_pipelined_requests_need_simulated_latency():
    with pytest.raises(ValueError, match="in_flight"):
        PlayConfig(in_flight=2)
    assert PlayConfig(in_flight=2, latency_ms=200).in_flight == 2


def test_sync_mode_with_latency_reports_the_real_time_it_would_take(breakout):
    from nitrogen.runtime.loop import run_episode

    config = PlayConfig(mode="sync", max_frames=60, actions_per_chunk=6, latency_ms=100)
    stats = run_episode(breakout, ReplayPolicy(_actions(None, n=400)), config)
    assert stats.chunks == 10 and stats.simulated_s == pytest.approx(60 / 60 + 10 * 0.1)


def test_the_shipped_agent_plays_a_short_rtc_episode():
    """CI's RTC eval of the shipped agent: a few simulated seconds with 100 ms of latency."""
    from nitrogen.runtime.loop import SwitchStats, run_episode
    from nitrogen.runtime.sources import make_policy

    policy = make_policy("default", seed=0)
    switches = SwitchStats()
    with make_env("ale:Freeway") as env:
        config = PlayConfig(mode="async", max_frames=48, chunking="rtc", execute=3, latency_ms=100)
        stats = run_episode(env, policy, config, [switches], seed=0)
    assert stats.chunking == "rtc" and stats.frames == 48
    assert stats.delays[1:] and all(d == 6 for d in stats.delays[1:])  # action_shift 0
    assert stats.stale == 6 * stats.chunks and stats.starved == 6  # each chunk arrives 6 frames late
    summary = switches.summary()
    assert summary["switches"] >= 3 and summary["inside_stick"] >= 0
