"""Tests for nitrogen.runtime.dataset_writer: recorded shards load unchanged through nitrogen.data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nitrogen.data import BUTTON_COLUMNS, GameplayDataset, WindowConfig, load_gameplay
from nitrogen.envs import make_env
from nitrogen.gamepad import GamepadState
from nitrogen.runtime.dataset_writer import record
from nitrogen.runtime.experts import BreakoutExpert

pytest.importorskip("ale_py")


class Spy:
    """Wraps an agent and remembers every (episode, frame, state) it was asked about."""

    def __init__(self, inner: Any, fail_at: int | None = None) -> None:
        self.inner = inner
        self.name = f"spy-{inner.name}"
        self.fail_at = fail_at
        self.seen: list[tuple[int, np.ndarray, GamepadState]] = []
        self.seeds: list[int | None] = []
        self.episode = -1

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.episode += 1
        self.seeds.append(seed)
        self.inner.reset(env, seed)

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise RuntimeError("simulated crash")
        state = self.inner.act(env, frame)
        if len(self.seen) % 7 == 3:  # also exercise sticks, triggers and several buttons at once
            state = GamepadState(
                state.buttons | {"NORTH", "START"}, left_stick=(0.5, -1.0), right_stick=(-0.25, 0.75), right_trigger=1.0
            )
        self.seen.append((self.episode, frame.copy(), state))
        return state


def test_record_loads_unchanged(tmp_path: Path) -> None:
    spy = Spy(BreakoutExpert(0))
    with make_env("ale:Breakout") as env:
        summary = record(env, spy, episodes=2, out_dir=tmp_path, seed=5, max_frames=60, shard_frames=50)
    assert spy.seeds == [5, 6]
    shards = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert shards == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    info = json.loads((tmp_path / "info.json").read_text())
    assert info == summary
    assert info["env"] == "ale:Breakout" and info["agent"] == "spy-scripted-breakout"
    assert info["frames"] == 120 and info["episode_frames"] == [60, 60] and info["seeds"] == [5, 6]
    assert info["complete"] is True and len(info["scores"]) == 2

    ds = load_gameplay(tmp_path / "data")
    assert len(ds) == 120
    expected_cols = ["image", *BUTTON_COLUMNS, "j_left", "j_right", "episode_id", "frame", "reward", "score", "game"]
    assert sorted(ds.column_names) == sorted(expected_cols)
    rows = ds[:]
    assert rows["episode_id"] == [0] * 60 + [1] * 60
    assert rows["frame"] == list(range(60)) * 2
    assert set(rows["game"]) == {"ale:Breakout"}
    for ep in (0, 1):
        ep_scores = [s for s, e in zip(rows["score"], rows["episode_id"], strict=True) if e == ep]
        ep_rewards = [r for r, e in zip(rows["reward"], rows["episode_id"], strict=True) if e == ep]
        assert ep_scores == pytest.approx(np.cumsum(ep_rewards).tolist())
        assert ep_scores[-1] == pytest.approx(info["scores"][ep])

    for i, (ep, frame, state) in enumerate(spy.seen):
        assert rows["episode_id"][i] == ep
        for name, col in zip(
            ("SOUTH", "NORTH", "START", "DPAD_LEFT", "DPAD_RIGHT"),
            ("south", "north", "start", "dpad_left", "dpad_right"),
            strict=True,
        ):
            assert rows[col][i] == (name in state.buttons), (i, col)
        assert rows["right_trigger"][i] == (state.right_trigger >= 0.5)
        assert rows["left_trigger"][i] is False
        assert rows["j_left"][i] == pytest.approx(list(state.left_stick))
        assert rows["j_right"][i] == pytest.approx(list(state.right_stick))
        if i % 20 == 0:  # image decode is the slow part; spot-check a spread of rows
            np.testing.assert_array_equal(np.asarray(ds[i]["image"].convert("RGB")), frame)
    assert any(s.pressed("SOUTH") for _, _, s in spy.seen)  # the expert served the ball

    windows = GameplayDataset(ds, WindowConfig(action_shift=3, action_horizon=18))
    assert len(windows) == 2 * (60 - 21 + 1)  # windows never cross an episode boundary
    item = windows[0]
    assert item["actions"].shape == (18, 25)
    _, action_rows = windows.window_rows(0)
    expected = np.stack([spy.seen[r][2].to_action_vector() for r in action_rows])
    np.testing.assert_allclose(item["actions"].numpy(), expected, atol=1e-6)  # all 25 dims, virtual ones too


def test_crash_keeps_completed_shards(tmp_path: Path) -> None:
    spy = Spy(BreakoutExpert(0), fail_at=75)
    with make_env("ale:Breakout") as env, pytest.raises(RuntimeError, match="simulated crash"):
        record(env, spy, episodes=3, out_dir=tmp_path, max_frames=60, shard_frames=25)
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]  # 75 rows
    ds = load_gameplay(tmp_path / "data")
    assert len(ds) == 75
    assert ds["episode_id"] == [0] * 60 + [1] * 15
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["complete"] is False and info["rows_written"] == 75
    np.testing.assert_array_equal(np.asarray(ds[74]["image"].convert("RGB")), spy.seen[74][1])
    with make_env("ale:Breakout") as env, pytest.raises(FileExistsError):  # never mixes runs
        record(env, BreakoutExpert(0), episodes=1, out_dir=tmp_path, max_frames=5)


class EnvSpy:
    """Wraps an env and remembers the states it was stepped with (what was executed)."""

    def __init__(self, env: Any) -> None:
        self.env, self.executed = env, []
        self.spec_id, self.fps = env.spec_id, env.fps

    def reset(self, seed: int | None = None):
        return self.env.reset(seed=seed)

    def step(self, state: GamepadState):
        self.executed.append(state)
        return self.env.step(state)


class Still:
    """An agent that never presses anything."""

    name = "still"

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        return GamepadState()


def test_explore_plays_random_bursts_but_records_the_agents_actions(tmp_path: Path) -> None:
    with make_env("ale:Breakout") as env:
        spy = EnvSpy(env)
        info = record(spy, Still(), episodes=2, out_dir=tmp_path / "a", seed=3, max_frames=200, explore=0.05)
        executed = spy.executed
        spy.executed = []
        again = record(spy, Still(), episodes=2, out_dir=tmp_path / "b", seed=3, max_frames=200, explore=0.05)
    moved = sum(1 for s in executed if s.buttons)
    assert info["explored_frames"] > 0 and moved > 0  # random actions reached the game...
    assert moved <= info["explored_frames"] <= sum(info["episode_frames"])
    rows = load_gameplay(tmp_path / "a" / "data")[:]
    assert not any(any(rows[c]) for c in BUTTON_COLUMNS)  # ...but every row is the agent's (nothing)
    assert spy.executed == executed and again["explored_frames"] == info["explored_frames"]  # seeded
    with make_env("ale:Breakout") as env, pytest.raises(ValueError, match="explore"):
        record(env, Still(), episodes=1, out_dir=tmp_path / "c", explore=1.0)


# ------------------------------------------------------------------------------ driver and labeller


def _drive(frames: int, seed: int) -> np.ndarray:
    """A fixed, seeded sequence of Gopher moves (left/right/shovel) as raw action vectors."""
    rng = np.random.default_rng(seed)
    moves = [frozenset(), frozenset({"DPAD_LEFT"}), frozenset({"DPAD_RIGHT", "SOUTH"}), frozenset({"SOUTH"})]
    states = [GamepadState(moves[int(rng.integers(len(moves)))]) for _ in range(frames // 4 + 1)]
    return np.stack([s.to_action_vector() for s in states for _ in range(4)][:frames])


def _columns_state(rows: dict, i: int) -> GamepadState:
    from nitrogen.data import row_to_action
    from nitrogen.gamepad import state_from_action

    return state_from_action(row_to_action({k: v[i] for k, v in rows.items()}))


def _gopher_expert_replay(env: Any, seed: int, executed: list[GamepadState]) -> tuple[list[GamepadState], list[bool]]:
    """The same game replayed by hand: the expert's label on every frame the executed moves led to,
    and whether each executed move agreed with it."""
    from nitrogen.runtime.experts import GopherExpert

    expert, frame = GopherExpert(), env.reset(seed=seed)[0]
    expert.reset(env, seed)
    labels, agrees = [], []
    for state in executed:
        label = expert.act(env, frame)
        labels.append(label)
        agrees.append(env.to_env_action(label) == env.to_env_action(state))
        frame = env.step(state)[0]
    return labels, agrees


def test_the_scripted_labeller_labels_the_states_the_agent_reaches(tmp_path: Path) -> None:
    from nitrogen.gamepad import state_from_action
    from nitrogen.runtime.sources import ReplayPolicy

    frames, seed = 120, 11
    played = _drive(frames, 5)
    with make_env("ale:Gopher") as env:
        info = record(
            env,
            ReplayPolicy(played, horizon=1),
            episodes=1,
            out_dir=tmp_path,
            seed=seed,
            max_frames=frames,
            label="scripted",
            beta=0.0,
        )
        labels, agrees = _gopher_expert_replay(env, seed, [state_from_action(v) for v in played])
    rows = load_gameplay(tmp_path / "data")[:]
    assert rows["driver"] == ["policy"] * frames and rows["labeller"] == ["scripted"] * frames
    assert rows["intervention"] == [False] * frames
    for i in range(frames):
        assert _columns_state(rows, i).buttons == labels[i].buttons  # the expert's action, not the agent's
    assert rows["agrees"] == agrees
    assert 0 < sum(agrees) < frames  # the agent's moves often differ from the labels
    assert info["agreement"] == pytest.approx(sum(agrees) / frames)
    assert info["driver_frames"] == {"policy": frames} and info["label"] == "scripted" and info["beta"] == 0.0


def test_beta_one_reproduces_plain_expert_recording(tmp_path: Path) -> None:
    from nitrogen.runtime.sources import ReplayPolicy, make_policy

    with make_env("ale:Gopher") as env:
        plain = record(env, make_policy("scripted", env=env), episodes=2, out_dir=tmp_path / "a", seed=3, max_frames=90)
        mixed = record(
            env,
            ReplayPolicy(_drive(200, 1), horizon=18),  # a driver that never gets a frame
            episodes=2,
            out_dir=tmp_path / "b",
            seed=3,
            max_frames=90,
            label="scripted",
            beta=1.0,
        )
    a, b = load_gameplay(tmp_path / "a" / "data")[:], load_gameplay(tmp_path / "b" / "data")[:]
    assert set(b) - set(a) == {"driver", "agrees", "intervention", "labeller"}
    for name in a:
        assert a[name] == b[name], name  # frames, actions, rewards, scores: identical
    assert b["driver"] == ["expert"] * 180 and all(b["agrees"])
    assert plain["scores"] == mixed["scores"] and mixed["policy_frames"] == 0 and mixed["agreement"] is None


def test_beta_mixes_the_drivers_per_frame_reproducibly(tmp_path: Path) -> None:
    from nitrogen.runtime.sources import ReplayPolicy

    runs = []
    for k in range(2):
        with make_env("ale:Gopher") as env:
            record(
                env,
                ReplayPolicy(_drive(300, 2), horizon=1),
                episodes=1,
                out_dir=tmp_path / str(k),
                seed=4,
                max_frames=300,
                label="scripted",
                beta=0.3,
            )
        runs.append(load_gameplay(tmp_path / str(k) / "data")[:])
    drivers = runs[0]["driver"]
    assert runs[1]["driver"] == drivers
    assert 0.2 < drivers.count("expert") / 300 < 0.4
    assert all(ok for ok, who in zip(runs[0]["agrees"], drivers, strict=True) if who == "expert")


class FakePerson:
    """A person's input as a script: ``{frame: (pad state, takeover key held)}``, neutral elsewhere."""

    name = "fake-person"

    def __init__(self, script: dict[int, tuple[GamepadState, bool]]) -> None:
        self.script, self.frame = script, 0

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.frame = 0

    def read(self, env: Any, frame: np.ndarray) -> tuple[GamepadState, bool]:
        reading = self.script.get(self.frame, (GamepadState(), False))
        self.frame += 1
        return reading


def test_a_person_takes_over_and_releases_and_exactly_those_rows_are_marked(tmp_path: Path) -> None:
    from nitrogen.gamepad import state_from_action
    from nitrogen.runtime.dataset_writer import HumanLabeller
    from nitrogen.runtime.sources import ReplayPolicy

    left, fire = GamepadState(frozenset({"DPAD_LEFT"})), GamepadState(frozenset({"SOUTH"}))
    script = {f: (left, True) for f in range(5, 10)}  # the takeover key and a direction
    script |= {f: (GamepadState(), True) for f in range(10, 12)}  # key held, hands off the pad: "do nothing"
    script |= {f: (fire, False) for f in range(20, 23)}  # no key: touching the pad takes over too
    taken = sorted(script)
    policy_actions = _drive(40, 3)
    with make_env("ale:Gopher") as env:
        info = record(
            env,
            ReplayPolicy(policy_actions, horizon=1),
            episodes=1,
            out_dir=tmp_path,
            seed=0,
            max_frames=40,
            label=HumanLabeller(FakePerson(script)),
        )
    rows = load_gameplay(tmp_path / "data")[:]
    assert [i for i, v in enumerate(rows["intervention"]) if v] == taken
    assert [i for i, d in enumerate(rows["driver"]) if d == "human"] == taken
    assert set(rows["labeller"]) == {"human"} and all(rows["agrees"])
    for i in range(40):
        expected = script[i][0] if i in script else state_from_action(policy_actions[i])
        assert _columns_state(rows, i).buttons == expected.buttons, i
    assert info["intervention_frames"] == len(taken) and info["driver_frames"] == {"human": 10, "policy": 30}


class _Executed:
    """The env as the labelled recorder sees it, noting each action the game was stepped with."""

    def __init__(self, env: Any) -> None:
        self.env, self.executed = env, []

    def step(self, state: GamepadState) -> Any:
        self.executed.append(state)
        return self.env.step(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class _Asking:
    """A model policy that notes what each request carried (the RTC prefix, its delay)."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.requests = policy, []
        self.spec = policy.spec

    def predict(self, frame: Any, **kwargs: Any) -> Any:
        self.requests.append(kwargs)
        return self.policy.predict(frame, **kwargs)

    def reset(self) -> None:
        self.policy.reset()

    def info(self) -> dict[str, Any]:
        return self.policy.info()

    def close(self) -> None:
        self.policy.close()


def test_the_labeller_works_under_async_real_time_chunking(tmp_path: Path, tiny_ckpt: Path) -> None:
    """While the model drives in async mode with RTC (simulated 50 ms), every row still holds the
    expert's label for the frame the game was in, whichever chunk's action was executed."""
    from nitrogen.inference.session import InferenceSession

    frames, seed = 60, 4
    policy = _Asking(InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=0))
    with make_env("ale:Gopher") as game:
        env = _Executed(game)
        info = record(
            env, policy, episodes=1, out_dir=tmp_path, seed=seed, max_frames=frames, label="scripted",
            mode="async", chunking="rtc", execute=3, latency_ms=50,
        )  # fmt: skip
        d = 3 - policy.spec.action_shift  # 50 ms is 3 frames; the shift's actions are not the new chunk's
        assert any(r.get("chunking") == "rtc" and r["delay"] == d for r in policy.requests)  # RTC requests went out
        labels, agrees = _gopher_expert_replay(game, seed, env.executed)
    rows = load_gameplay(tmp_path / "data")[:]
    assert len(labels) == frames and rows["driver"] == ["policy"] * frames
    for i in range(frames):
        assert _columns_state(rows, i).buttons == labels[i].buttons
    assert rows["agrees"] == agrees and info["agreement"] == pytest.approx(sum(agrees) / frames)
    assert 0 < sum(agrees) < frames  # the untrained model's moves often differ from the labels
