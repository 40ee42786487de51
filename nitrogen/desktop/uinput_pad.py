"""A virtual Xbox 360 pad on Linux, through uinput.

:class:`VirtualPad` turns :class:`~nitrogen.gamepad.GamepadState` into Linux input events with the
codes that the kernel's ``xpad`` driver uses for a real Xbox 360 pad, so SDL, Steam Input and Wine
treat it as one. It writes to any :class:`UInputDevice` (``write``/``syn``/``close``):
:func:`open_uinput_device` makes a real one with ``python-evdev``, and :class:`FakeUInputDevice`
records events for tests, so everything but the kernel call is exercised without ``/dev/uinput``.

Event-stream conventions (one :meth:`VirtualPad.send` = one report):

* Only values that differ from the previous report are written, in ascending ``(type, code)``
  order (so all ``EV_KEY`` before all ``EV_ABS``), followed by one ``SYN_REPORT``
  ``(EV_SYN, 0, 0)``. A state identical to the last one writes nothing at all, not even a SYN.
  The device starts neutral, so the first report holds only what differs from neutral.
* Face buttons by position, as xpad reports them: model ``SOUTH`` = Xbox A = ``BTN_SOUTH`` 0x130,
  ``EAST`` = B = ``BTN_EAST`` 0x131, ``WEST`` = X = 0x133, ``NORTH`` = Y = 0x134. Linux names
  0x133 ``BTN_NORTH`` and 0x134 ``BTN_WEST`` (aliases of ``BTN_X``/``BTN_Y``), but xpad puts the
  Xbox X (west) button on 0x133 and Y (north) on 0x134, and games read the pad through that xpad
  mapping, so we follow xpad, not the alias names.
* Shoulders ``BTN_TL``/``BTN_TR``, ``BACK`` = ``BTN_SELECT``, ``START`` = ``BTN_START``,
  ``GUIDE`` = ``BTN_MODE``, stick clicks ``BTN_THUMBL``/``BTN_THUMBR``; pressed 1, released 0.
* Sticks: ``round(v * 32767)``, symmetric, so -1 -> -32767 (never -32768), 0 -> 0, +1 -> 32767.
  The model's +y is *down* (:data:`nitrogen.gamepad.STICK_Y_DOWN`; the original Windows client
  negates y for XInput), and so is evdev's +Y, so :data:`STICK_Y_SIGN` is +1: no flip. Being
  symmetric, the inversion never overflows int16. Left stick ``ABS_X``/``ABS_Y``, right stick
  ``ABS_RX``/``ABS_RY``.
* Triggers: ``round(v * 255)`` on ``ABS_Z`` (left) and ``ABS_RZ`` (right), range [0, 255].
* D-pad as hat axes, as xpad does for 360 pads: ``ABS_HAT0X`` = right - left, ``ABS_HAT0Y`` =
  down - up, each in {-1, 0, 1} (up is -1; opposite directions together cancel to 0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import NamedTuple, Protocol, runtime_checkable

from ..gamepad import NEUTRAL, STICK_Y_DOWN, GamepadState
from .errors import PadUnavailableError

__all__ = [
    "ABS_RANGES",
    "BUTTON_CODES",
    "STICK_Y_SIGN",
    "FakeUInputDevice",
    "InputEvent",
    "UInputDevice",
    "VirtualPad",
    "encode_state",
    "open_uinput_device",
    "open_virtual_pad",
    "stick_value",
    "trigger_value",
]

# Event types and codes (linux/input-event-codes.h).
EV_SYN = 0x00
EV_KEY = 0x01
EV_ABS = 0x03
SYN_REPORT = 0

BTN_SOUTH = 0x130  # Xbox A (alias BTN_A)
BTN_EAST = 0x131  # Xbox B (alias BTN_B)
BTN_X = 0x133  # Xbox X on xpad; Linux also calls it BTN_NORTH
BTN_Y = 0x134  # Xbox Y on xpad; Linux also calls it BTN_WEST
BTN_TL = 0x136
BTN_TR = 0x137
BTN_SELECT = 0x13A
BTN_START = 0x13B
BTN_MODE = 0x13C
BTN_THUMBL = 0x13D
BTN_THUMBR = 0x13E

ABS_X = 0x00
ABS_Y = 0x01
ABS_Z = 0x02
ABS_RX = 0x03
ABS_RY = 0x04
ABS_RZ = 0x05
ABS_HAT0X = 0x10
ABS_HAT0Y = 0x11

STICK_MAX = 32767
TRIGGER_MAX = 255
STICK_Y_SIGN = 1 if STICK_Y_DOWN else -1
"""Multiplies the model's stick y before encoding: both the model's and evdev's +y point down."""

BUTTON_CODES: Mapping[str, int] = {
    "SOUTH": BTN_SOUTH,
    "EAST": BTN_EAST,
    "WEST": BTN_X,
    "NORTH": BTN_Y,
    "LEFT_SHOULDER": BTN_TL,
    "RIGHT_SHOULDER": BTN_TR,
    "BACK": BTN_SELECT,
    "START": BTN_START,
    "GUIDE": BTN_MODE,
    "LEFT_THUMB": BTN_THUMBL,
    "RIGHT_THUMB": BTN_THUMBR,
}
"""Model button name -> ``EV_KEY`` code (by physical position, see the module docstring)."""

DPAD_BUTTONS: frozenset[str] = frozenset({"DPAD_UP", "DPAD_DOWN", "DPAD_LEFT", "DPAD_RIGHT"})

ABS_RANGES: Mapping[int, tuple[int, int, int, int]] = {
    ABS_X: (-32768, 32767, 16, 128),
    ABS_Y: (-32768, 32767, 16, 128),
    ABS_RX: (-32768, 32767, 16, 128),
    ABS_RY: (-32768, 32767, 16, 128),
    ABS_Z: (0, 255, 0, 0),
    ABS_RZ: (0, 255, 0, 0),
    ABS_HAT0X: (-1, 1, 0, 0),
    ABS_HAT0Y: (-1, 1, 0, 0),
}
"""``EV_ABS`` code -> (min, max, fuzz, flat), the values xpad declares for a 360 pad."""

DEVICE_NAME = "Microsoft X-Box 360 pad"
VENDOR_ID = 0x045E
PRODUCT_ID = 0x028E
VERSION = 0x0110
BUS_USB = 0x03


class InputEvent(NamedTuple):
    """One Linux input event, as written to the device; compares equal to a plain 3-tuple."""

    type: int
    code: int
    value: int


@runtime_checkable
class UInputDevice(Protocol):
    """The part of ``evdev.UInput`` a pad needs."""

    def write(self, ev_type: int, code: int, value: int) -> None: ...

    def syn(self) -> None: ...

    def close(self) -> None: ...


def stick_value(v: float, *, invert: bool = False) -> int:
    """A stick coordinate in [-1, 1] -> int16, symmetric: ``round(v * 32767)`` (negated if ``invert``)."""
    out = round(max(-1.0, min(1.0, float(v))) * STICK_MAX)
    return -out if invert else out


def trigger_value(v: float) -> int:
    """A trigger in [0, 1] -> [0, 255]: ``round(v * 255)``."""
    return round(max(0.0, min(1.0, float(v))) * TRIGGER_MAX)


def encode_state(state: GamepadState) -> dict[tuple[int, int], int]:
    """The full device state for ``state``: ``(type, code) -> value`` for every key and axis."""
    pressed = state.buttons
    out: dict[tuple[int, int], int] = {(EV_KEY, code): int(name in pressed) for name, code in BUTTON_CODES.items()}
    invert_y = STICK_Y_SIGN < 0
    out[(EV_ABS, ABS_X)] = stick_value(state.left_stick[0])
    out[(EV_ABS, ABS_Y)] = stick_value(state.left_stick[1], invert=invert_y)
    out[(EV_ABS, ABS_RX)] = stick_value(state.right_stick[0])
    out[(EV_ABS, ABS_RY)] = stick_value(state.right_stick[1], invert=invert_y)
    out[(EV_ABS, ABS_Z)] = trigger_value(state.left_trigger)
    out[(EV_ABS, ABS_RZ)] = trigger_value(state.right_trigger)
    out[(EV_ABS, ABS_HAT0X)] = int("DPAD_RIGHT" in pressed) - int("DPAD_LEFT" in pressed)
    out[(EV_ABS, ABS_HAT0Y)] = int("DPAD_DOWN" in pressed) - int("DPAD_UP" in pressed)
    return out


class VirtualPad:
    """Sends :class:`GamepadState` frames to a uinput device as minimal Xbox 360 event reports."""

    def __init__(self, device: UInputDevice) -> None:
        missing = [f"{m}()" for m in ("write", "syn", "close") if not callable(getattr(device, m, None))]
        if missing:
            raise TypeError(
                f"{type(device).__name__} is not a UInputDevice: it lacks {', '.join(missing)} "
                "(expected evdev.UInput, FakeUInputDevice, or an object with write(type, code, value), syn(), close())"
            )
        self.device = device
        self._current = encode_state(NEUTRAL)
        self._closed = False

    def send(self, state: GamepadState) -> list[InputEvent]:
        """Write what changed since the last report, then ``SYN_REPORT``; returns the events written."""
        if not isinstance(state, GamepadState):
            raise TypeError(f"send() takes a GamepadState, got {type(state).__name__}")
        if self._closed:
            raise RuntimeError("this VirtualPad is closed")
        target = encode_state(state)
        events = [InputEvent(t, c, v) for (t, c), v in sorted(target.items()) if self._current[(t, c)] != v]
        if not events:
            return []
        for ev in events:
            self.device.write(ev.type, ev.code, ev.value)
        self.device.syn()
        self._current = target
        return [*events, InputEvent(EV_SYN, SYN_REPORT, 0)]

    def reset(self) -> list[InputEvent]:
        """Release everything and centre the sticks (a report only if something was not neutral)."""
        return self.send(NEUTRAL)

    def close(self) -> None:
        """Reset, then close the device; idempotent."""
        if self._closed:
            return
        try:
            self.reset()
        finally:
            self._closed = True
            self.device.close()

    def __enter__(self) -> VirtualPad:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FakeUInputDevice:
    """A :class:`UInputDevice` that records ``(type, code, value)`` tuples (SYN as ``(0, 0, 0)``)."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, int]] = []
        self.closed = False

    def write(self, ev_type: int, code: int, value: int) -> None:
        if self.closed:
            raise RuntimeError("write to a closed device")
        self.events.append((ev_type, code, value))

    def syn(self) -> None:
        self.write(EV_SYN, SYN_REPORT, 0)

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[tuple[int, int, int]]:
        """The events recorded since the last ``take()``."""
        out, self.events = self.events, []
        return out


def open_uinput_device(path: str = "/dev/uinput", name: str = DEVICE_NAME) -> UInputDevice:
    """A real uinput device that looks like an Xbox 360 pad (``evdev.UInput``).

    Raises :class:`PadUnavailableError` listing everything that is missing: the device node (load
    the ``uinput`` module; in a container pass ``--device /dev/uinput``), write permission on it,
    or the ``evdev`` package.
    """
    problems: list[str] = []
    if not os.path.exists(path):
        problems.append(
            f"{path} does not exist: load the kernel module (`sudo modprobe uinput`); in a container, "
            f"pass the device in (`docker run --device {path}`)"
        )
    elif not os.access(path, os.W_OK):
        problems.append(
            f"{path} is not writable by this user: add a udev rule such as "
            f'KERNEL=="uinput", MODE="0660", GROUP="input" and join the input group, or run as root'
        )
    try:
        import evdev  # type: ignore[import-not-found]
    except ImportError:
        evdev = None
        problems.append("the python package `evdev` is not installed: `pip install evdev`")
    if problems or evdev is None:
        raise PadUnavailableError("cannot create a virtual gamepad:\n  - " + "\n  - ".join(problems))
    ecodes = evdev.ecodes
    capabilities = {
        ecodes.EV_KEY: sorted(BUTTON_CODES.values()),
        ecodes.EV_ABS: [
            (code, evdev.AbsInfo(value=0, min=lo, max=hi, fuzz=fuzz, flat=flat, resolution=0))
            for code, (lo, hi, fuzz, flat) in sorted(ABS_RANGES.items())
        ],
    }
    try:
        device: UInputDevice = evdev.UInput(
            capabilities,
            name=name,
            vendor=VENDOR_ID,
            product=PRODUCT_ID,
            version=VERSION,
            bustype=BUS_USB,
            devnode=path,
        )
    except (OSError, evdev.UInputError) as exc:
        raise PadUnavailableError(f"cannot create a virtual gamepad on {path}: {exc}") from exc
    return device


def open_virtual_pad(path: str = "/dev/uinput") -> VirtualPad:
    """A :class:`VirtualPad` on a real uinput device (see :func:`open_uinput_device`)."""
    return VirtualPad(open_uinput_device(path))
