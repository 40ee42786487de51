"""The human policy: exact key and controller readings in, pad states out; a real (dummy-driver)
pygame window driven by posted key events records a person's play."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nitrogen.data import load_gameplay
from nitrogen.envs import make_env
from nitrogen.runtime.dataset_writer import record
from nitrogen.runtime.human import CONTROLLER_BUTTONS, HumanAgent, controller_state, keyboard_buttons, merge

pygame = pytest.importorskip("pygame")


def test_keyboard_buttons_follow_the_keymap():
    assert keyboard_buttons({"left", "space", "f12"}) == {"DPAD_LEFT", "SOUTH"}
    assert keyboard_buttons({"k"}, {"k": "NORTH"}) == {"NORTH"}
    assert keyboard_buttons(set()) == frozenset()


class FakeController:
    """A physical controller cannot exist here: this one answers with fixed raw SDL readings."""

    def __init__(self, axes: dict[str, int], buttons: set[str]):
        self.axes = {getattr(pygame, f"CONTROLLER_AXIS_{k}"): v for k, v in axes.items()}
        self.buttons = {getattr(pygame, f"CONTROLLER_BUTTON_{b}") for b in buttons}

    def get_axis(self, axis: int) -> int:
        return self.axes.get(axis, 0)

    def get_button(self, button: int) -> bool:
        return button in self.buttons


def test_controller_readings_become_a_pad_state():
    pad = FakeController(
        {"LEFTX": -32768, "LEFTY": 16384, "RIGHTX": 3000, "RIGHTY": -32767, "TRIGGERRIGHT": 32767},
        {"A", "DPAD_UP", "LEFTSHOULDER"},
    )
    state = controller_state(pad, pygame, deadzone=0.15)
    assert state.buttons == {"SOUTH", "DPAD_UP", "LEFT_SHOULDER"}
    assert state.left_stick == pytest.approx((-1.0, 16384 / 32767))  # +y down, as SDL and the model
    assert state.right_stick == pytest.approx((0.0, -1.0))  # 3000/32767 is inside the deadzone
    assert state.right_trigger == pytest.approx(1.0) and state.left_trigger == 0.0
    every = controller_state(FakeController({}, set(CONTROLLER_BUTTONS)), pygame)
    assert every.buttons == set(CONTROLLER_BUTTONS.values())


def test_merge_keeps_the_stronger_input():
    keys = controller_state(FakeController({"LEFTX": 8000}, {"B"}), pygame)
    pad = controller_state(FakeController({"LEFTX": -30000, "TRIGGERLEFT": 20000}, {"X"}), pygame)
    both = merge(keys, pad)
    assert both.buttons == {"EAST", "WEST"}
    assert both.left_stick[0] == pytest.approx(-30000 / 32767)
    assert both.left_trigger == pytest.approx(20000 / 32767)


@pytest.fixture()
def dummy_display(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    yield
    pygame.display.quit()


class Keys:
    """Posts key events into SDL's queue at chosen frames, as a person's keyboard would."""

    def __init__(self, script: dict[int, list[tuple[int, int]]]):
        self.script, self.frame = script, 0

    def before(self) -> None:
        for event_type, key in self.script.get(self.frame, []):
            pygame.event.post(pygame.event.Event(event_type, key=key, mod=0, unicode="", scancode=0))
        self.frame += 1


def test_a_person_records_breakout_and_esc_keeps_what_was_played(dummy_display, tmp_path: Path):
    keys = Keys(
        {
            2: [(pygame.KEYDOWN, pygame.K_SPACE)],
            4: [(pygame.KEYUP, pygame.K_SPACE), (pygame.KEYDOWN, pygame.K_RIGHT)],
            10: [(pygame.KEYUP, pygame.K_RIGHT)],
            15: [(pygame.KEYDOWN, pygame.K_ESCAPE)],
        }
    )

    class Scripted(HumanAgent):
        def act(self, env, frame):
            keys.before()
            return super().act(env, frame)

    agent = Scripted(fps=10_000)  # no real-time pacing in the test
    with make_env("ale:Breakout") as env:
        info = record(env, agent, episodes=3, out_dir=tmp_path, seed=0)
    shown = pygame.surfarray.array3d(pygame.display.get_surface())
    agent.close()
    assert info["interrupted"] is True and info["frames"] == 15 and info["episode_frames"] == [15]
    assert json.loads((tmp_path / "info.json").read_text())["rows_written"] == 15
    rows = load_gameplay(tmp_path / "data")[:]
    assert rows["south"] == [False] * 2 + [True] * 2 + [False] * 11
    assert rows["dpad_right"] == [False] * 4 + [True] * 6 + [False] * 5
    assert shown.shape == (160 * 3, 210 * 3, 3) and shown.any()  # the frame was on screen, scaled
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    np.testing.assert_array_equal(rows["episode_id"], [0] * 15)


def test_the_takeover_key_switches_a_labelling_person_in_and_out(dummy_display, tmp_path: Path):
    """The agent drives; the person holds Left Shift on frames 3-6 (and steers right on 4-5); the
    rows are marked exactly there, with what the person pressed; the key itself is no pad button."""
    from nitrogen.runtime.dataset_writer import HumanLabeller
    from nitrogen.runtime.sources import ReplayPolicy

    keys = Keys(
        {
            3: [(pygame.KEYDOWN, pygame.K_LSHIFT)],
            4: [(pygame.KEYDOWN, pygame.K_RIGHT)],
            6: [(pygame.KEYUP, pygame.K_RIGHT)],
            7: [(pygame.KEYUP, pygame.K_LSHIFT)],
        }
    )

    class Scripted(HumanAgent):
        def read(self, env, frame):
            keys.before()
            return super().read(env, frame)

    person = Scripted(fps=10_000, takeover_key="left shift")
    assert "left shift" not in person.keymap
    fire = np.zeros((12, 25), dtype=np.float32)
    fire[:, 18] = 1.0  # SOUTH (FIRE) on every frame: what the agent plays
    with make_env("ale:Breakout") as env:
        info = record(
            env,
            ReplayPolicy(fire, horizon=1),
            episodes=1,
            out_dir=tmp_path,
            seed=0,
            max_frames=12,
            label=HumanLabeller(person),
        )
    person.close()
    rows = load_gameplay(tmp_path / "data")[:]
    assert [i for i, v in enumerate(rows["intervention"]) if v] == [3, 4, 5, 6]
    assert rows["dpad_right"] == [False] * 4 + [True] * 2 + [False] * 6
    assert rows["south"] == [True] * 3 + [False] * 4 + [True] * 5  # the person's rows hold their own input
    assert info["intervention_frames"] == 4
