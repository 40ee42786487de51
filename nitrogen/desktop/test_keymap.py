"""KeyMap: presets, the state -> bindings rules, mouse curves, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitrogen.desktop.keymap import PRESETS, KeyMap, MouseMotion, load_keymap
from nitrogen.gamepad import GamepadState

README_KEYMAP = """\
name: xsoldier
stick_threshold: 0.5
buttons:
  SOUTH: space
  RIGHT_SHOULDER: Shift_L
  DPAD_UP: Up
  DPAD_DOWN: Down
  DPAD_LEFT: Left
  DPAD_RIGHT: Right
left_stick: {up: Up, down: Down, left: Left, right: Right}
"""


def test_presets_load_and_do_what_the_issue_says() -> None:
    assert set(PRESETS) == {"arrows", "wasd-mouse"}
    arrows = load_keymap("arrows")
    face = GamepadState(buttons=frozenset({"SOUTH", "EAST", "WEST", "NORTH"}))
    assert arrows.bindings_for(face) == {"z", "x", "a", "s"}
    assert arrows.bindings_for(GamepadState(buttons=frozenset({"DPAD_UP", "DPAD_RIGHT"}))) == {"Up", "Right"}
    assert arrows.bindings_for(GamepadState(left_stick=(-0.9, 0.8))) == {"Left", "Down"}  # +y is down
    assert arrows.mouse_motion(GamepadState(right_stick=(1.0, 1.0))) == (0.0, 0.0)

    wasd = load_keymap("wasd-mouse")
    assert wasd.bindings_for(GamepadState(left_stick=(0.0, -1.0))) == {"w"}
    assert wasd.bindings_for(GamepadState(left_stick=(0.7, 0.7))) == {"d", "s"}
    assert wasd.bindings_for(GamepadState(buttons=frozenset({"SOUTH"}), right_trigger=1.0)) == {"space", "mouse:left"}
    assert wasd.bindings_for(GamepadState(left_trigger=1.0)) == {"mouse:right"}
    assert wasd.bindings_for(GamepadState(right_stick=(1.0, 0.0))) == frozenset()  # the mouse stick
    assert wasd.mouse_motion(GamepadState(right_stick=(1.0, -1.0))) == (15.0, -15.0)


def test_stick_threshold_is_strict_and_configurable() -> None:
    keymap = load_keymap("arrows")
    assert keymap.bindings_for(GamepadState(left_stick=(0.5, -0.5))) == frozenset()
    assert keymap.bindings_for(GamepadState(left_stick=(0.51, -0.51))) == {"Right", "Up"}
    loose = keymap.model_copy(update={"stick_threshold": 0.2})
    assert loose.bindings_for(GamepadState(left_stick=(0.3, 0.0))) == {"Right"}


def test_mouse_curve_and_deadzone() -> None:
    m = MouseMotion(speed=10.0, curve=2.0, deadzone=0.2)
    assert m.axis(0.2) == 0.0 and m.axis(-0.1) == 0.0
    assert m.axis(1.0) == 10.0 and m.axis(-1.0) == -10.0
    assert m.axis(0.6) == pytest.approx(10.0 * 0.5**2)
    assert MouseMotion(speed=10.0, curve=1.0, deadzone=0.0).axis(0.5) == pytest.approx(5.0)


def test_user_file_from_the_readme(tmp_path: Path) -> None:
    path = tmp_path / "xsoldier.yaml"
    path.write_text(README_KEYMAP)
    keymap = load_keymap(path)
    assert keymap.name == "xsoldier"
    assert keymap.bindings_for(GamepadState(buttons=frozenset({"SOUTH", "RIGHT_SHOULDER"}))) == {"space", "Shift_L"}
    as_json = tmp_path / "same.json"
    as_json.write_text(json.dumps(keymap.model_dump()))
    assert load_keymap(as_json) == keymap


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"buttons": {"JUMP": "space"}}, "not a pad button"),
        ({"buttons": {"SOUTH": "NoSuchKeyAtAll"}}, "not an X keysym name"),
        ({"buttons": {"SOUTH": "rm -rf /"}}, "is not a key"),
        ({"stick_threshold": 1.5}, "stick_threshold"),
        ({"mouse": {"stick": "left"}, "left_stick": {"up": "w"}}, "moves the mouse"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_keymaps_are_clear_errors(tmp_path: Path, doc: dict[str, object], message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        load_keymap(path)


def test_bad_files_and_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        load_keymap("no-such-preset")
    with pytest.raises(ValueError, match="does not exist"):
        load_keymap(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("buttons: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_keymap(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_keymap(listing)
    assert isinstance(load_keymap(KeyMap()), KeyMap)
