"""Tests of nitrogen.rundir.run_folder with real files: a run folder's videos, actions.jsonl, episode.json."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from nitrogen.gamepad import GamepadState
from nitrogen.rundir.overlay import OVERLAY_MIN_HEIGHT
from nitrogen.rundir.run_folder import RunRecorder, new_run_dir
from nitrogen.rundir.test_overlay import _state
from nitrogen.rundir.test_video import _decode, _solid


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


def test_episode_json_has_the_per_button_press_rate(tmp_path: Path) -> None:
    from nitrogen.actions import BUTTONS

    frame = np.zeros((32, 32, 3), np.uint8)
    states = [
        GamepadState(buttons=frozenset({"SOUTH"}), right_stick=(0.0, -0.9)),  # right stick up: RIGHT_UP
        GamepadState(right_trigger=1.0),
        GamepadState(),
        GamepadState(buttons=frozenset({"SOUTH"})),
    ]
    with RunRecorder(tmp_path / "run", fps=30, video=False) as rec:
        for i, state in enumerate(states):
            rec.record(frame, state, step=i, substep=0)
    rates = json.loads((tmp_path / "run" / "episode.json").read_text())["button_press_rate"]
    assert list(rates) == list(BUTTONS)
    assert rates["SOUTH"] == 0.5 and rates["RIGHT_TRIGGER"] == 0.25 and rates["RIGHT_UP"] == 0.25
    assert rates["GUIDE"] == 0.0 and sum(rates.values()) == 1.0
