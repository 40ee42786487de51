"""The Windows backend's pure parts, with fakes: XUSB table, conversions, window choice, pad, pauser."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from nitrogen.desktop import windows as win
from nitrogen.desktop.errors import PlatformNotSupportedError, WindowNotFoundError
from nitrogen.desktop.window import Region, WindowInfo, choose_window, clip_region
from nitrogen.gamepad import NEUTRAL, PAD_BUTTONS, GamepadState

not_windows = pytest.mark.skipif(sys.platform == "win32", reason="checks the behaviour off Windows")


class FakeVX360:
    """Records vgamepad calls and keeps an XInput report, as VX360Gamepad does."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.buttons = 0
        self.report: dict[str, Any] = {}

    def press_button(self, button: int) -> None:
        self.calls.append(("press", button))
        self.buttons |= button

    def release_button(self, button: int) -> None:
        self.calls.append(("release", button))
        self.buttons &= ~button

    # vgamepad's own float -> int16 conversion: no flip (the pad flips the model's y first).
    def left_joystick_float(self, x_value_float: float, y_value_float: float) -> None:
        self.report["left"] = (round(x_value_float * 32767), round(y_value_float * 32767))

    def right_joystick_float(self, x_value_float: float, y_value_float: float) -> None:
        self.report["right"] = (round(x_value_float * 32767), round(y_value_float * 32767))

    def left_trigger_float(self, value_float: float) -> None:
        self.report["lt"] = win.xinput_trigger(value_float)

    def right_trigger_float(self, value_float: float) -> None:
        self.report["rt"] = win.xinput_trigger(value_float)

    def update(self) -> None:
        self.calls.append(("update", self.buttons, dict(self.report)))


def test_xusb_table() -> None:
    assert set(win.XUSB_BUTTONS) == set(PAD_BUTTONS)
    assert win.XUSB_BUTTONS["SOUTH"] == ("XUSB_GAMEPAD_A", 0x1000)
    assert win.XUSB_BUTTONS["EAST"] == ("XUSB_GAMEPAD_B", 0x2000)
    assert win.XUSB_BUTTONS["WEST"] == ("XUSB_GAMEPAD_X", 0x4000)
    assert win.XUSB_BUTTONS["NORTH"] == ("XUSB_GAMEPAD_Y", 0x8000)
    bits = [bit for _, bit in win.XUSB_BUTTONS.values()]
    assert len(set(bits)) == 15 and all(b & (b - 1) == 0 for b in bits)
    assert win.xusb_button_mask({"SOUTH", "DPAD_UP", "START"}) == 0x1011
    with pytest.raises(ValueError, match="not a pad button"):
        win.xusb_button_mask({"LEFT_TRIGGER"})


def test_conversions_flip_the_model_y_for_xinput() -> None:
    # The model's +y is down; XInput's is up.
    assert win.xinput_stick(0.5, -1.0) == (16384, 32767)
    assert win.xinput_stick(1.0, 1.0) == (32767, -32767)
    assert win.xinput_stick(2.0, -2.0) == (32767, 32767)
    assert [win.xinput_trigger(v) for v in (0.0, 0.5, 1.0)] == [0, 128, 255]


def test_vgamepad_pad_sends_differences() -> None:
    fake = FakeVX360()
    pad = win.VGamepadPad(fake)
    assert pad.send(GamepadState(frozenset({"SOUTH", "DPAD_UP"}), left_stick=(0.5, -1.0), right_trigger=1.0))
    assert fake.calls == [
        ("press", 0x0001),  # PAD_BUTTONS order: DPAD_UP before SOUTH
        ("press", 0x1000),
        ("update", 0x1001, {"left": (16384, 32767), "right": (0, 0), "lt": 0, "rt": 255}),
    ]
    fake.calls.clear()
    assert not pad.send(GamepadState(frozenset({"SOUTH", "DPAD_UP"}), left_stick=(0.5, -1.0), right_trigger=1.0))
    assert fake.calls == []
    pad.send(GamepadState(frozenset({"SOUTH", "NORTH"})))
    assert fake.calls[:2] == [("release", 0x0001), ("press", 0x8000)]
    assert fake.calls[-1] == ("update", 0x9000, {"left": (0, 0), "right": (0, 0), "lt": 0, "rt": 0})
    pad.reset()
    assert fake.buttons == 0
    with pytest.raises(TypeError):
        pad.send(NEUTRAL.to_dict())  # type: ignore[arg-type]


def test_choose_window_prefers_visible_then_largest_then_title() -> None:
    tiny = WindowInfo(1, "launcher", 0, 0, 10, 10)
    hidden = WindowInfo(2, "splash", 0, 0, 1000, 1000, visible=False)
    big = WindowInfo(3, "overlay", 0, 0, 640, 480)
    big_titled = WindowInfo(4, "Celeste", 5, 5, 640, 480)
    empty = WindowInfo(5, "Celeste", 0, 0, 0, 0)
    assert choose_window([tiny, hidden, big, big_titled, empty]) == big  # tie -> first
    assert choose_window([tiny, hidden, big, big_titled, empty], title_hint="celeste") == big_titled
    assert choose_window([hidden, empty]) == hidden  # an unmapped window beats none
    with pytest.raises(WindowNotFoundError):
        choose_window([empty])
    assert (
        win.find_window_win32(9, title_hint="Celeste", enumerate_windows=lambda pids: [big, big_titled]) == big_titled
    )
    with pytest.raises(WindowNotFoundError, match="process 9"):
        win.find_window_win32(9, enumerate_windows=lambda pids: [])


def test_regions() -> None:
    r = Region(-10, 5, 100, 50)
    assert r.as_ltrb() == (-10, 5, 90, 55)
    assert r.as_mss() == {"left": -10, "top": 5, "width": 100, "height": 50}
    assert clip_region(r, {"left": 0, "top": 0, "width": 80, "height": 40}) == Region(0, 5, 80, 35)


def test_speedhack_pauser_with_a_controller() -> None:
    speeds: list[float] = []

    class Controller:
        def set_speed(self, speed: float) -> None:
            speeds.append(speed)

    with win.SpeedhackPauser(1234, Controller()) as pauser:
        pauser.pause()
        pauser.pause()
        assert pauser.is_paused
    assert speeds == [0.0, 1.0] and not pauser.is_paused


@not_windows
def test_backends_refuse_to_start_off_windows() -> None:
    for make in (
        lambda: win.WindowsBackend("game.exe"),
        lambda: win.VGamepadPad(),
        lambda: win.DxcamCapture(Region(0, 0, 10, 10)),
        lambda: win.SpeedhackPauser(1234),
        lambda: win.find_window_win32(1234),
    ):
        with pytest.raises(PlatformNotSupportedError, match="needs Windows"):
            make()
