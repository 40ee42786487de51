"""VirtualPad: the exact Xbox 360 (xpad) event stream, written to a recording fake device."""

from __future__ import annotations

import pytest

from nitrogen.desktop import uinput_pad as up
from nitrogen.desktop.errors import PadUnavailableError
from nitrogen.desktop.uinput_pad import FakeUInputDevice, UInputDevice, VirtualPad, encode_state, open_uinput_device
from nitrogen.gamepad import NEUTRAL, PAD_BUTTONS, GamepadState

SYN = (0, 0, 0)
KEY, ABS = 1, 3


def test_codes_are_the_xpad_ones() -> None:
    assert set(up.BUTTON_CODES) | up.DPAD_BUTTONS == set(PAD_BUTTONS)
    assert up.BUTTON_CODES == {
        "SOUTH": 0x130,
        "EAST": 0x131,
        "WEST": 0x133,
        "NORTH": 0x134,  # A, B, X, Y by position
        "LEFT_SHOULDER": 0x136,
        "RIGHT_SHOULDER": 0x137,
        "BACK": 0x13A,
        "START": 0x13B,
        "GUIDE": 0x13C,
        "LEFT_THUMB": 0x13D,
        "RIGHT_THUMB": 0x13E,
    }
    assert (up.ABS_X, up.ABS_Y, up.ABS_Z, up.ABS_RX, up.ABS_RY, up.ABS_RZ, up.ABS_HAT0X, up.ABS_HAT0Y) == (
        0,
        1,
        2,
        3,
        4,
        5,
        0x10,
        0x11,
    )
    assert up.STICK_Y_SIGN == 1  # the model's +y and evdev's +Y both point down


def test_exact_stream_then_differences_then_reset() -> None:
    dev = FakeUInputDevice()
    pad = VirtualPad(dev)
    first = GamepadState(buttons=frozenset({"SOUTH", "DPAD_UP"}), left_stick=(0.5, -1.0), right_trigger=1.0)
    returned = pad.send(first)
    expected = [
        (KEY, 0x130, 1),  # SOUTH = A
        (ABS, 0x00, 16384),  # left x: round(0.5 * 32767)
        (ABS, 0x01, -32767),  # left y: model -1 (up) -> evdev -32767 (up)
        (ABS, 0x05, 255),  # right trigger
        (ABS, 0x11, -1),  # HAT0Y: up is -1
        SYN,
    ]
    assert dev.take() == expected
    assert returned == expected

    second = GamepadState(
        buttons=frozenset({"SOUTH", "NORTH", "DPAD_LEFT"}),
        left_stick=(0.5, 0.25),
        right_stick=(-1.0, 1.0),
        left_trigger=0.5,
        right_trigger=1.0,
    )
    pad.send(second)
    assert dev.take() == [
        (KEY, 0x134, 1),  # NORTH = Y
        (ABS, 0x01, 8192),  # round(0.25 * 32767) = 8192
        (ABS, 0x02, 128),  # left trigger round(0.5 * 255)
        (ABS, 0x03, -32767),  # right x -1 -> -32767 (symmetric scaling)
        (ABS, 0x04, 32767),  # right y +1 (down) -> 32767
        (ABS, 0x10, -1),  # HAT0X: left
        (ABS, 0x11, 0),  # up released
        SYN,
    ]

    assert pad.send(second) == [] and dev.take() == []  # nothing changed: nothing written, no SYN

    pad.reset()
    assert dev.take() == [
        (KEY, 0x130, 0),
        (KEY, 0x134, 0),
        (ABS, 0x00, 0),
        (ABS, 0x01, 0),
        (ABS, 0x02, 0),
        (ABS, 0x03, 0),
        (ABS, 0x04, 0),
        (ABS, 0x05, 0),
        (ABS, 0x10, 0),
        SYN,
    ]
    assert pad.reset() == []


def test_every_button_and_hat_direction() -> None:
    enc = encode_state(GamepadState(buttons=frozenset(PAD_BUTTONS)))
    assert all(enc[(KEY, code)] == 1 for code in up.BUTTON_CODES.values())
    assert enc[(ABS, 0x10)] == 0 and enc[(ABS, 0x11)] == 0  # opposite directions cancel
    for name, axis, value in [
        ("DPAD_UP", 0x11, -1),
        ("DPAD_DOWN", 0x11, 1),
        ("DPAD_LEFT", 0x10, -1),
        ("DPAD_RIGHT", 0x10, 1),
    ]:
        assert encode_state(GamepadState(buttons=frozenset({name})))[(ABS, axis)] == value
    assert set(encode_state(NEUTRAL).values()) == {0}


@pytest.mark.parametrize(
    ("v", "x", "y"),
    [(-1.0, -32767, -32767), (1.0, 32767, 32767), (0.0, 0, 0), (1e-6, 0, 0), (-0.5, -16384, -16384)],
)
def test_stick_scaling_is_symmetric(v: float, x: int, y: int) -> None:
    enc = encode_state(GamepadState(left_stick=(v, v), right_stick=(v, v)))
    assert (enc[(ABS, 0)], enc[(ABS, 1)], enc[(ABS, 3)], enc[(ABS, 4)]) == (x, y, x, y)
    lo, hi = up.ABS_RANGES[up.ABS_X][:2]
    assert lo <= x <= hi and lo <= y <= hi


def test_trigger_scaling() -> None:
    assert [up.trigger_value(v) for v in (0.0, 0.5, 1.0, 2.0, -1.0)] == [0, 128, 255, 255, 0]


def test_unknown_device_and_inputs_are_rejected_clearly() -> None:
    with pytest.raises(TypeError, match=r"not a UInputDevice: it lacks write\(\), syn\(\)"):
        VirtualPad(object())  # type: ignore[arg-type]
    pad = VirtualPad(FakeUInputDevice())
    assert isinstance(pad.device, UInputDevice)
    with pytest.raises(TypeError, match="GamepadState"):
        pad.send({"buttons": ["SOUTH"]})  # type: ignore[arg-type]


def test_close_resets_then_closes_and_context_manager() -> None:
    dev = FakeUInputDevice()
    with VirtualPad(dev) as pad:
        pad.send(GamepadState(buttons=frozenset({"START"})))
    assert dev.events[-2:] == [(KEY, 0x13B, 0), SYN] and dev.closed
    pad.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pad.send(NEUTRAL)


def test_open_uinput_device_explains_a_missing_node(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PadUnavailableError) as info:
        open_uinput_device(str(tmp_path / "uinput"))
    msg = str(info.value)
    assert "does not exist" in msg and "modprobe uinput" in msg and "--device" in msg


def test_open_uinput_device_explains_permissions_and_missing_evdev(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    node = tmp_path / "uinput"
    node.touch()
    monkeypatch.setattr(up.os, "access", lambda path, mode: False)
    monkeypatch.setitem(__import__("sys").modules, "evdev", None)  # import evdev -> ImportError
    with pytest.raises(PadUnavailableError) as info:
        open_uinput_device(str(node))
    msg = str(info.value)
    assert "not writable" in msg and "input" in msg
    assert "pip install evdev" in msg


def test_open_uinput_device_builds_an_xbox_360_device_with_evdev(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With a stand-in ``evdev`` module: the capabilities and identity handed to ``evdev.UInput``."""
    import collections
    import types

    created: dict[str, object] = {}

    class FakeUInput(FakeUInputDevice):
        def __init__(self, events: dict, **kwargs: object) -> None:  # type: ignore[type-arg]
            super().__init__()
            created.update(kwargs, events=events)

    fake = types.ModuleType("evdev")
    fake.AbsInfo = collections.namedtuple("AbsInfo", "value min max fuzz flat resolution")  # type: ignore[attr-defined]
    fake.ecodes = types.SimpleNamespace(EV_KEY=1, EV_ABS=3)  # type: ignore[attr-defined]
    fake.UInput = FakeUInput  # type: ignore[attr-defined]
    fake.UInputError = type("UInputError", (Exception,), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "evdev", fake)
    node = tmp_path / "uinput"
    node.touch()

    pad = up.open_virtual_pad(str(node))
    assert isinstance(pad.device, FakeUInput)
    assert created["vendor"] == 0x045E and created["product"] == 0x028E and created["devnode"] == str(node)
    assert created["name"] == "Microsoft X-Box 360 pad"
    events = created["events"]
    assert events[1] == sorted(up.BUTTON_CODES.values())  # type: ignore[index]
    absinfo = dict(events[3])  # type: ignore[index]
    assert sorted(absinfo) == [0, 1, 2, 3, 4, 5, 0x10, 0x11]
    assert (absinfo[0].min, absinfo[0].max, absinfo[5].max, absinfo[0x11].min) == (-32768, 32767, 255, -1)
    pad.send(GamepadState(buttons=frozenset({"EAST"})))
    assert pad.device.events == [(KEY, 0x131, 1), SYN]  # type: ignore[attr-defined]
