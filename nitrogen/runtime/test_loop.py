"""The play loop on real ALE Breakout frames, with the tiny golden checkpoint and replayed policies."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from nitrogen import InferenceSession
from nitrogen.actions import BUTTON_INDEX
from nitrogen.serving.client import ModelClient
from nitrogen.inference.engine import PolicyEngine
from nitrogen.envs import make_env
from nitrogen.runtime.loop import PlayConfig, StartupPress, play
from nitrogen.runtime.sources import DelayedPolicy, ReplayPolicy
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
