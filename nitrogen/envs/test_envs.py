"""Tests for nitrogen.envs: the pad -> game-action tables and real ALE / CarRacing episodes."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from nitrogen.envs import (
    AtariEnv,
    CarRacingEnv,
    GamepadEnv,
    MissingDependencyError,
    UnknownEnvError,
    ale_games,
    list_envs,
    make_env,
)
from nitrogen.envs.mappings import (
    ALE_ACTIONS,
    CAR_RACING_BINDINGS,
    FIRE_BUTTONS,
    STICK_DEAD_ZONE,
    STICK_UP_Y,
    ale_action_to_state,
    car_action_to_state,
    resolve_ale_action,
    state_to_ale_action,
    state_to_car_action,
)
from nitrogen.gamepad import NEUTRAL, PAD_BUTTONS, GamepadState

# Box2D's SWIG bindings warn on import under Python 3.11+; not ours to fix.
pytestmark = pytest.mark.filterwarnings(r"ignore:builtin type [Ss]wig\w* has no __module__:DeprecationWarning")

UP = STICK_UP_Y  # stick y when pushed up
DOWN = -STICK_UP_Y


def pad(*buttons: str, stick: tuple[float, float] = (0.0, 0.0)) -> GamepadState:
    return GamepadState(buttons=frozenset(buttons), left_stick=stick)


# ---------------------------------------------------------------------------------------------
# ALE mapping tables
# ---------------------------------------------------------------------------------------------


def test_ale_table_matches_ale_py_enum() -> None:
    import ale_py

    assert ALE_ACTIONS == tuple(a.name for a in sorted(ale_py.Action, key=lambda a: a.value))
    assert [ale_py.Action[n].value for n in ALE_ACTIONS] == list(range(18))


def test_stick_convention_is_positive_y_down() -> None:
    assert STICK_UP_Y == -1.0
    assert state_to_ale_action(pad(stick=(0.0, -1.0))) == "UP"
    assert state_to_ale_action(pad(stick=(0.0, 1.0))) == "DOWN"


MAPPING_CASES: list[tuple[GamepadState, str]] = [
    # nothing / fire buttons alone
    (NEUTRAL, "NOOP"),
    (pad("SOUTH"), "FIRE"),
    (pad("EAST"), "FIRE"),
    (pad("WEST"), "FIRE"),
    (pad("NORTH"), "FIRE"),
    (pad("SOUTH", "NORTH"), "FIRE"),
    # D-pad, 8 directions, with and without fire
    (pad("DPAD_UP"), "UP"),
    (pad("DPAD_DOWN"), "DOWN"),
    (pad("DPAD_LEFT"), "LEFT"),
    (pad("DPAD_RIGHT"), "RIGHT"),
    (pad("DPAD_UP", "DPAD_RIGHT"), "UPRIGHT"),
    (pad("DPAD_UP", "DPAD_LEFT"), "UPLEFT"),
    (pad("DPAD_DOWN", "DPAD_RIGHT"), "DOWNRIGHT"),
    (pad("DPAD_DOWN", "DPAD_LEFT"), "DOWNLEFT"),
    (pad("DPAD_UP", "SOUTH"), "UPFIRE"),
    (pad("DPAD_RIGHT", "EAST"), "RIGHTFIRE"),
    (pad("DPAD_LEFT", "WEST"), "LEFTFIRE"),
    (pad("DPAD_DOWN", "NORTH"), "DOWNFIRE"),
    (pad("DPAD_UP", "DPAD_RIGHT", "SOUTH"), "UPRIGHTFIRE"),
    (pad("DPAD_UP", "DPAD_LEFT", "SOUTH"), "UPLEFTFIRE"),
    (pad("DPAD_DOWN", "DPAD_RIGHT", "SOUTH"), "DOWNRIGHTFIRE"),
    (pad("DPAD_DOWN", "DPAD_LEFT", "SOUTH"), "DOWNLEFTFIRE"),
    # opposite D-pad buttons cancel
    (pad("DPAD_UP", "DPAD_DOWN"), "NOOP"),
    (pad("DPAD_LEFT", "DPAD_RIGHT", "SOUTH"), "FIRE"),
    (pad("DPAD_UP", "DPAD_DOWN", "DPAD_LEFT"), "LEFT"),
    # left stick, 8 directions
    (pad(stick=(0.0, UP)), "UP"),
    (pad(stick=(0.0, DOWN)), "DOWN"),
    (pad(stick=(-1.0, 0.0)), "LEFT"),
    (pad(stick=(1.0, 0.0)), "RIGHT"),
    (pad(stick=(0.71, 0.71 * UP)), "UPRIGHT"),
    (pad(stick=(-0.71, 0.71 * UP)), "UPLEFT"),
    (pad(stick=(0.71, 0.71 * DOWN)), "DOWNRIGHT"),
    (pad("SOUTH", stick=(-0.71, 0.71 * DOWN)), "DOWNLEFTFIRE"),
    # stick dead zone (strictly above 0.5 counts, per axis)
    (pad(stick=(STICK_DEAD_ZONE, 0.0)), "NOOP"),
    (pad(stick=(-0.49, 0.5 * UP)), "NOOP"),
    (pad(stick=(0.51, 0.0)), "RIGHT"),
    (pad(stick=(0.3, 0.9 * UP)), "UP"),
    (pad(stick=(-0.6, 0.2 * DOWN)), "LEFT"),
    (pad("EAST", stick=(0.2, -0.2)), "FIRE"),
    # D-pad priority: any D-pad button -> the stick is ignored entirely
    (pad("DPAD_UP", stick=(1.0, DOWN)), "UP"),
    (pad("DPAD_LEFT", stick=(0.0, UP)), "LEFT"),
    (pad("DPAD_UP", "DPAD_DOWN", stick=(1.0, 0.0)), "NOOP"),
    # other controls are not FIRE and not directions
    (pad("LEFT_SHOULDER", "RIGHT_SHOULDER", "START", "BACK"), "NOOP"),
    (GamepadState(left_trigger=1.0, right_trigger=1.0, right_stick=(1.0, 1.0)), "NOOP"),
]


@pytest.mark.parametrize(("state", "expected"), MAPPING_CASES, ids=[e for _, e in MAPPING_CASES])
def test_state_to_ale_action_table(state: GamepadState, expected: str) -> None:
    assert state_to_ale_action(state) == expected


def _expected_name(dx: int, dy: int, fire: bool) -> str:
    """ALE's naming scheme, built independently of the mapping table."""
    name = {1: "UP", 0: "", -1: "DOWN"}[dy] + {1: "RIGHT", 0: "", -1: "LEFT"}[dx] + ("FIRE" if fire else "")
    return name or "NOOP"


@pytest.mark.parametrize("fire_button", [None, *sorted(FIRE_BUTTONS)])
def test_every_dpad_and_fire_combination(fire_button: str | None) -> None:
    dpad = {"DPAD_UP": (0, 1), "DPAD_DOWN": (0, -1), "DPAD_LEFT": (-1, 0), "DPAD_RIGHT": (1, 0)}
    for r in range(len(dpad) + 1):
        for combo in itertools.combinations(dpad, r):
            dx = sum(dpad[b][0] for b in combo)
            dy = sum(dpad[b][1] for b in combo)
            buttons = set(combo) | ({fire_button} if fire_button else set())
            got = state_to_ale_action(GamepadState(buttons=frozenset(buttons)))
            assert got == _expected_name(dx, dy, fire_button is not None), combo


def test_canonical_states_use_dpad_and_south() -> None:
    assert ale_action_to_state("NOOP") == NEUTRAL
    assert ale_action_to_state("FIRE").buttons == {"SOUTH"}
    assert ale_action_to_state("UPLEFTFIRE").buttons == {"DPAD_UP", "DPAD_LEFT", "SOUTH"}
    assert ale_action_to_state("DOWNRIGHT").buttons == {"DPAD_DOWN", "DPAD_RIGHT"}
    for name in ALE_ACTIONS:
        state = ale_action_to_state(name)
        assert state.left_stick == (0.0, 0.0) and set(state.buttons) <= set(PAD_BUTTONS)
    with pytest.raises(ValueError, match="unknown ALE action"):
        ale_action_to_state("JUMP")


@pytest.mark.parametrize("name", ALE_ACTIONS)
def test_round_trip_full_action_set(name: str) -> None:
    assert state_to_ale_action(ale_action_to_state(name)) == name


BREAKOUT_MINIMAL = ("NOOP", "FIRE", "RIGHT", "LEFT")
BREAKOUT_FALLBACK = {
    "NOOP": "NOOP",
    "FIRE": "FIRE",
    "UP": "NOOP",
    "RIGHT": "RIGHT",
    "LEFT": "LEFT",
    "DOWN": "NOOP",
    "UPRIGHT": "RIGHT",
    "UPLEFT": "LEFT",
    "DOWNRIGHT": "RIGHT",
    "DOWNLEFT": "LEFT",
    "UPFIRE": "FIRE",
    "RIGHTFIRE": "RIGHT",
    "LEFTFIRE": "LEFT",
    "DOWNFIRE": "FIRE",
    "UPRIGHTFIRE": "RIGHT",
    "UPLEFTFIRE": "LEFT",
    "DOWNRIGHTFIRE": "RIGHT",
    "DOWNLEFTFIRE": "LEFT",
}


@pytest.fixture(scope="module")
def breakout() -> Iterator[AtariEnv]:
    env = AtariEnv("Breakout", seed=0)
    yield env
    env.close()


def test_breakout_minimal_set_and_fallback(breakout: AtariEnv) -> None:
    assert breakout.action_names == BREAKOUT_MINIMAL
    for name, expected in BREAKOUT_FALLBACK.items():
        got = breakout.to_env_action(ale_action_to_state(name))
        assert got == expected, name
        # the fallback result round-trips exactly: state -> action -> canonical state -> same action
        assert breakout.to_env_action(breakout.canonical_state(got)) == got
    with pytest.raises(ValueError, match="has no action 'UP'"):
        breakout.canonical_state("UP")


def test_fallback_chain_order() -> None:
    # Remove actions one by one: UPRIGHTFIRE degrades along the documented chain.
    chain = ["UPRIGHTFIRE", "UPRIGHT", "RIGHTFIRE", "RIGHT", "UPFIRE", "UP", "FIRE", "NOOP"]
    available = set(ALE_ACTIONS)
    for expected in chain:
        assert resolve_ale_action(1, 1, True, available) == expected
        available.discard(expected)
    with pytest.raises(ValueError, match="no NOOP"):
        resolve_ale_action(1, 1, True, available)


def test_fallback_for_a_vertical_only_set() -> None:
    freeway = ("NOOP", "UP", "DOWN")  # ALE's minimal set for Freeway
    assert resolve_ale_action(1, 1, True, freeway) == "UP"
    assert resolve_ale_action(-1, -1, False, freeway) == "DOWN"
    assert resolve_ale_action(1, 0, True, freeway) == "NOOP"
    assert resolve_ale_action(0, 0, True, freeway) == "NOOP"
    with pytest.raises(ValueError, match="unknown ALE action"):
        resolve_ale_action(0, 0, False, ("NOOP", "JUMP"))


def test_full_action_space_env_round_trip() -> None:
    with AtariEnv("breakout", full_action_space=True) as env:
        assert env.action_names == ALE_ACTIONS
        for name in ALE_ACTIONS:
            assert env.to_env_action(env.canonical_state(name)) == name


# ---------------------------------------------------------------------------------------------
# ALE episodes (real frames)
# ---------------------------------------------------------------------------------------------


def _paddle_x(frame: np.ndarray) -> float:
    """Mean column of Breakout's red paddle (rows 189-193, inside the side walls)."""
    band = frame[189:194, 8:152]
    cols = np.nonzero((band == (200, 72, 72)).all(axis=2).any(axis=0))[0]
    assert cols.size, "no paddle found"
    return float(cols.mean()) + 8


def test_breakout_frames_fire_then_right() -> None:
    env = make_env("ale:Breakout", seed=0)
    assert isinstance(env, GamepadEnv)
    assert (env.name, env.spec_id, env.fps) == ("Breakout", "ale:Breakout", 60)
    frame0, info = env.reset()
    assert frame0.shape == (210, 160, 3) and frame0.dtype == np.uint8
    assert info["lives"] == 5
    for _ in range(5):
        frame1, _, terminated, truncated, info = env.step(pad("SOUTH"))
    assert info["env_action"] == "FIRE" and not (terminated or truncated)
    assert not np.array_equal(frame0, frame1)  # the ball was served
    for _ in range(30):
        frame2, *_ = env.step(pad("DPAD_RIGHT"))
    assert not np.array_equal(frame1, frame2)
    assert _paddle_x(frame2) > _paddle_x(frame1) + 10
    env.close()
    assert env.closed
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


def _rollout(seed: int, states: list[GamepadState]) -> list[np.ndarray]:
    with make_env("ale:breakout", seed=seed) as env:
        frames = [env.reset()[0]]
        for state in states:
            frame, _, terminated, truncated, _ = env.step(state)
            assert not (terminated or truncated)
            frames.append(frame)
    return frames


def test_breakout_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    states = [ale_action_to_state(ALE_ACTIONS[i]) for i in rng.integers(0, 18, size=100)]
    a, b = _rollout(7, states), _rollout(7, states)
    assert len(a) == len(b) == 101
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        assert np.array_equal(fa, fb), f"frames differ at step {i}"
    assert not np.array_equal(a[0], a[-1])  # the episode did move


def test_env_contract_errors_and_truncation() -> None:
    with AtariEnv("Pong", seed=1, max_episode_frames=3) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(NEUTRAL)
        env.reset()
        with pytest.raises(TypeError, match="GamepadState"):
            env.step(1)  # type: ignore[arg-type]
        truncs = [env.step(NEUTRAL)[3] for _ in range(3)]
        assert truncs == [False, False, True]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(NEUTRAL)
        env.reset()
        assert env.step(NEUTRAL)[3] is False
    with pytest.raises(ValueError, match="max_episode_frames"):
        AtariEnv("Pong", max_episode_frames=0)


# ---------------------------------------------------------------------------------------------
# CarRacing
# ---------------------------------------------------------------------------------------------


def test_car_bindings_are_steer_gas_brake() -> None:
    assert [b.component for b in CAR_RACING_BINDINGS] == ["steer", "gas", "brake"]
    state = GamepadState(left_stick=(-0.25, 0.9), right_trigger=0.75, left_trigger=0.5, buttons=frozenset({"SOUTH"}))
    np.testing.assert_array_equal(state_to_car_action(state), np.array([-0.25, 0.75, 0.5], np.float32))
    assert state_to_car_action(NEUTRAL).tolist() == [0.0, 0.0, 0.0]
    assert state_to_car_action(GamepadState(left_stick=(-1.0, 0.0))).tolist() == [-1.0, 0.0, 0.0]  # full left


@pytest.mark.parametrize("steer", [-1.0, -0.5, 0.0, 0.3, 1.0])
@pytest.mark.parametrize(("gas", "brake"), [(0.0, 0.0), (1.0, 0.0), (0.25, 0.8)])
def test_car_round_trip(steer: float, gas: float, brake: float) -> None:
    action = np.array([steer, gas, brake], np.float32)
    state = car_action_to_state(action)
    assert state.left_stick == (float(action[0]), 0.0)
    assert (state.right_trigger, state.left_trigger) == (float(action[1]), float(action[2]))
    np.testing.assert_array_equal(state_to_car_action(state), action)
    assert car_action_to_state(state_to_car_action(state)) == state
    with pytest.raises(ValueError, match="entries"):
        car_action_to_state([steer, gas])


def _drive(env: GamepadEnv, state: GamepadState, steps: int) -> tuple[np.ndarray, float]:
    env.reset(seed=3)
    total = 0.0
    for _ in range(steps):
        frame, reward, terminated, truncated, _ = env.step(state)
        total += reward
        assert not (terminated or truncated)
    return frame, total


def test_car_racing_gas_moves_the_car() -> None:
    with CarRacingEnv(frame="obs") as env:
        assert env.frame_shape == (96, 96, 3)
        gas = GamepadState(right_trigger=1.0)
        frame_gas, reward_gas = _drive(env, gas, 50)
        frame_idle, reward_idle = _drive(env, NEUTRAL, 50)
    assert frame_gas.dtype == np.uint8 and frame_gas.shape == (96, 96, 3)
    assert reward_gas > reward_idle + 1.0  # gas drove over new track tiles
    assert not np.array_equal(frame_gas, frame_idle)


def test_car_racing_rendered_frame() -> None:
    env = make_env("gym:carracing-v3", seed=0)
    assert (env.name, env.spec_id, env.fps) == ("CarRacing", "gym:CarRacing-v3", 50)
    frame, _ = env.reset()
    assert frame.shape == (400, 600, 3) and frame.dtype == np.uint8
    frame, _, _, _, info = env.step(GamepadState(left_stick=(-0.5, 0.0), right_trigger=1.0))
    assert frame.shape == (400, 600, 3) and frame.dtype == np.uint8
    assert info["env_action"] == [-0.5, 1.0, 0.0]
    env.close()


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_id", "name"),
    [
        ("ale:Breakout", "Breakout"),
        ("ale:breakout", "Breakout"),
        ("ALE:SpaceInvaders", "SpaceInvaders"),
        ("ale:space_invaders", "SpaceInvaders"),
        ("ale:montezumarevenge", "MontezumaRevenge"),
    ],
)
def test_ale_ids_are_case_insensitive(env_id: str, name: str) -> None:
    with make_env(env_id) as env:
        assert env.name == name and env.spec_id == f"ale:{name}"


@pytest.mark.parametrize(
    ("env_id", "match"),
    [
        ("snes:Mario", r"unknown prefix 'snes'.*ale, doom, gym"),
        ("Breakout", r"missing '<prefix>:'.*ale:Breakout"),
        ("ale:", r"no name"),
        ("ale:NotAGame", r"unknown Atari game 'NotAGame'.*Valid games include .*Alien"),
        ("ale:breakuot", r"Did you mean Breakout"),
        ("gym:MountainCar-v0", r"unsupported gymnasium env 'MountainCar-v0'.*gym:CarRacing-v3"),
    ],
)
def test_bad_ids(env_id: str, match: str) -> None:
    with pytest.raises(UnknownEnvError, match=match) as err:
        make_env(env_id)
    assert isinstance(err.value, ValueError)


@pytest.mark.skipif(importlib.util.find_spec("vizdoom") is not None, reason="vizdoom is installed")
def test_doom_needs_vizdoom() -> None:
    with pytest.raises(MissingDependencyError, match="pip install vizdoom") as err:
        make_env("doom:basic")
    assert isinstance(err.value, ImportError)


def test_list_envs_and_games() -> None:
    families = {f.prefix: f for f in list_envs()}
    assert set(families) == {"ale", "gym", "doom"}
    assert families["ale"].available and families["gym"].available
    assert "ale:Breakout" in families["ale"].examples and "gym:CarRacing-v3" in families["gym"].examples
    games = ale_games()
    assert len(games) > 50 and {"Breakout", "Pong", "SpaceInvaders"} <= set(games)
    with pytest.raises(TypeError):
        make_env("ale:Pong", no_such_option=True)


def test_pong_up_and_down_move_the_paddle_vertically() -> None:
    from nitrogen.envs import make_env

    env = make_env("ale:Pong")
    try:
        assert env.to_env_action(GamepadState(buttons=frozenset({"DPAD_UP"}))) == "RIGHT"
        assert env.to_env_action(GamepadState(buttons=frozenset({"DPAD_DOWN"}))) == "LEFT"
        assert env.canonical_state("RIGHT").buttons == frozenset({"DPAD_UP"})
        for action in env.action_names:  # the round trip still holds for every action Pong has
            assert env.to_env_action(env.canonical_state(action)) == action
    finally:
        env.close()


def test_clone_emulate_restore_round_trip() -> None:
    """``emulate`` runs the console ahead unrendered; ``restore_state`` puts RAM and the next frame back."""
    from nitrogen.envs import make_env

    with make_env("ale:Freeway") as env:
        env.reset(seed=0)
        snapshot, ram = env.clone_state(), env.ram().copy()
        reward, lost = env.emulate("UP", 30)
        assert env.ram()[14] == ram[14] + 30  # the chicken climbs one pixel a frame
        assert reward == 0.0 and not lost
        env.restore_state(snapshot)
        assert np.array_equal(env.ram(), ram)
        after_restore = env.step(env.canonical_state("UP"))[0]
    with make_env("ale:Freeway") as env:
        env.reset(seed=0)
        assert np.array_equal(env.step(env.canonical_state("UP"))[0], after_restore)


@pytest.mark.parametrize("game", ["Pooyan", "Carnival", "Breakout"])
def test_frame_shape_is_the_roms_screen(game: str) -> None:
    """Some ROMs draw more than 210 rows; every frame is the emulator's screen, whatever its height."""
    with AtariEnv(game) as env:
        frame, _ = env.reset(seed=0)
        screen = env._env.unwrapped.ale.getScreenRGB()
        assert frame.shape == env.frame_shape == screen.shape
        frame, *_ = env.step(env.canonical_state("NOOP"))
        np.testing.assert_array_equal(frame, env._env.unwrapped.ale.getScreenRGB())
