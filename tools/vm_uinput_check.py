"""Inside the VM of tools/vm_uinput.py: the project's virtual Xbox 360 pad on a real kernel's uinput.

Creates the pad with :func:`nitrogen.desktop.open_virtual_pad`, plays a scripted sequence of
:class:`GamepadState`, and reads every state back twice: with python-evdev (the exact event codes
and values, and the device's absinfo) and with SDL 2's game-controller API through pygame (SDL must
see an Xbox 360 controller; buttons, sticks, triggers and the D-pad must arrive). Prints one JSON
line ``RESULT {...}`` and exits 0 only if everything matched.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("SDL_JOYSTICK_DISABLE_UDEV", "1")  # no udevd in the VM: SDL scans /dev/input
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from nitrogen.desktop.uinput_pad import (
    ABS_RANGES,
    BUTTON_CODES,
    DEVICE_NAME,
    EV_ABS,
    EV_KEY,
    encode_state,
    open_virtual_pad,
)
from nitrogen.gamepad import GamepadState

SEQUENCE = [
    GamepadState(buttons=frozenset({"SOUTH"})),
    GamepadState(buttons=frozenset({"EAST", "LEFT_SHOULDER", "DPAD_UP"})),
    GamepadState(buttons=frozenset({"WEST", "NORTH", "RIGHT_SHOULDER", "DPAD_RIGHT", "DPAD_DOWN"})),
    GamepadState(buttons=frozenset({"BACK", "START", "GUIDE", "LEFT_THUMB", "RIGHT_THUMB", "DPAD_LEFT"})),
    GamepadState(left_stick=(1.0, -1.0), right_stick=(-0.5, 0.25)),
    GamepadState(left_stick=(-1.0, 1.0), right_stick=(0.75, -0.75), left_trigger=1.0),
    GamepadState(right_trigger=1.0, left_trigger=0.0),
    GamepadState(),
]

SDL_BUTTONS = {
    "SOUTH": "CONTROLLER_BUTTON_A",
    "EAST": "CONTROLLER_BUTTON_B",
    "WEST": "CONTROLLER_BUTTON_X",
    "NORTH": "CONTROLLER_BUTTON_Y",
    "LEFT_SHOULDER": "CONTROLLER_BUTTON_LEFTSHOULDER",
    "RIGHT_SHOULDER": "CONTROLLER_BUTTON_RIGHTSHOULDER",
    "BACK": "CONTROLLER_BUTTON_BACK",
    "START": "CONTROLLER_BUTTON_START",
    "GUIDE": "CONTROLLER_BUTTON_GUIDE",
    "LEFT_THUMB": "CONTROLLER_BUTTON_LEFTSTICK",
    "RIGHT_THUMB": "CONTROLLER_BUTTON_RIGHTSTICK",
    "DPAD_UP": "CONTROLLER_BUTTON_DPAD_UP",
    "DPAD_DOWN": "CONTROLLER_BUTTON_DPAD_DOWN",
    "DPAD_LEFT": "CONTROLLER_BUTTON_DPAD_LEFT",
    "DPAD_RIGHT": "CONTROLLER_BUTTON_DPAD_RIGHT",
}


def evdev_device():  # type: ignore[no-untyped-def]
    import evdev

    for path in evdev.list_devices():
        dev = evdev.InputDevice(path)
        if dev.name == DEVICE_NAME:
            return dev
    raise SystemExit(f"no {DEVICE_NAME!r} among {evdev.list_devices()}")


def read_report(dev) -> dict[tuple[int, int], int]:  # type: ignore[no-untyped-def]
    """The events of one report (up to its SYN_REPORT)."""
    out = {}
    for ev in dev.read_loop():
        if ev.type == 0:
            return out
        out[(ev.type, ev.code)] = ev.value
    return out


def sdl_expected(state: GamepadState, pygame) -> dict[str, int]:  # type: ignore[no-untyped-def]
    exp = {name: int(name in state.buttons) for name in SDL_BUTTONS}
    exp["leftx"] = round(state.left_stick[0] * 32767)
    exp["lefty"] = round(state.left_stick[1] * 32767)
    exp["rightx"] = round(state.right_stick[0] * 32767)
    exp["righty"] = round(state.right_stick[1] * 32767)
    exp["lefttrigger"] = round(state.left_trigger * 32767)
    exp["righttrigger"] = round(state.right_trigger * 32767)
    return exp


def sdl_state(ctrl, pygame) -> dict[str, int]:  # type: ignore[no-untyped-def]
    got = {name: int(ctrl.get_button(getattr(pygame, const))) for name, const in SDL_BUTTONS.items()}
    for key, const in (
        ("leftx", "CONTROLLER_AXIS_LEFTX"),
        ("lefty", "CONTROLLER_AXIS_LEFTY"),
        ("rightx", "CONTROLLER_AXIS_RIGHTX"),
        ("righty", "CONTROLLER_AXIS_RIGHTY"),
        ("lefttrigger", "CONTROLLER_AXIS_TRIGGERLEFT"),
        ("righttrigger", "CONTROLLER_AXIS_TRIGGERRIGHT"),
    ):
        got[key] = int(ctrl.get_axis(getattr(pygame, const)))
    return got


def matches(exp: dict[str, int], got: dict[str, int]) -> bool:
    # SDL rescales axes from the device's range; allow one step of rounding on each axis.
    return all(abs(exp[k] - got[k]) <= (1 if k.endswith(("x", "y", "trigger")) else 0) for k in exp)


def main() -> int:
    t0 = time.monotonic()
    result: dict[str, object] = {"kernel": os.uname().release}
    pad = open_virtual_pad()
    dev = evdev_device()
    caps = dev.capabilities()
    result["evdev"] = {"name": dev.name, "vendor": hex(dev.info.vendor), "product": hex(dev.info.product)}
    absinfo = {code: (info.min, info.max, info.fuzz, info.flat) for code, info in caps[EV_ABS]}
    ok_caps = absinfo == dict(ABS_RANGES) and sorted(caps[EV_KEY]) == sorted(BUTTON_CODES.values())
    result["capabilities_match"] = ok_caps

    import pygame
    from pygame._sdl2 import controller

    pygame.init()
    controller.init()
    count = controller.get_count()
    index = next((i for i in range(count) if controller.is_controller(i)), None)
    ctrl = controller.Controller(index) if index is not None else None
    result["sdl"] = {
        "version": ".".join(map(str, pygame.get_sdl_version())),
        "joysticks": count,
        "controller_name": ctrl.name if ctrl is not None else None,
    }

    evdev_ok, sdl_ok, mismatches = True, ctrl is not None and "360" in (ctrl.name or ""), []
    previous = encode_state(GamepadState())
    for i, state in enumerate(SEQUENCE):
        pad.send(state)
        target = encode_state(state)
        want = {k: v for k, v in target.items() if previous[k] != v}
        got = read_report(dev)
        if got != want:
            evdev_ok = False
            mismatches.append({"step": i, "reader": "evdev", "want": str(want), "got": str(got)})
        previous = target
        if ctrl is not None:
            exp = sdl_expected(state, pygame)
            deadline = time.monotonic() + 5.0
            seen = {}
            while time.monotonic() < deadline:
                pygame.event.pump()  # SDL reads the device's events here
                seen = sdl_state(ctrl, pygame)
                if matches(exp, seen):
                    break
                time.sleep(0.005)
            else:
                sdl_ok = False
                diff = {k: (exp[k], seen.get(k)) for k in exp if exp[k] != seen.get(k)}
                mismatches.append({"step": i, "reader": "sdl", "want_vs_got": diff})
    pad.close()
    result.update(
        evdev_ok=evdev_ok,
        sdl_ok=sdl_ok,
        states=len(SEQUENCE),
        mismatches=mismatches,
        check_s=round(time.monotonic() - t0, 2),
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if (ok_caps and evdev_ok and sdl_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
