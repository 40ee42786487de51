"""Play real desktop games: find the game's process and window, capture it, drive a virtual pad, pause it.

Linux: :func:`find_process`, :class:`ProcessPauser` (SIGSTOP/SIGCONT), :func:`find_window` and
:class:`ScreenCapture` (X11 + mss), :class:`VirtualPad` over uinput (:func:`open_virtual_pad`), and
:class:`KeyboardMousePad` (keyboard and mouse through XTEST, mapped by a :class:`KeyMap`).
Windows: :mod:`nitrogen.desktop.windows` (dxcam, vgamepad, a speed-hack pauser placeholder).

Names are imported on first use, so ``import nitrogen.desktop`` pulls in neither OpenCV nor Xlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AmbiguousProcessError": "errors",
    "DesktopError": "errors",
    "DisplayUnavailableError": "errors",
    "PadUnavailableError": "errors",
    "PlatformNotSupportedError": "errors",
    "ProcessNotFoundError": "errors",
    "WindowNotFoundError": "errors",
    "ProcessCandidate": "process",
    "find_process": "process",
    "Pauser": "pause",
    "ProcessPauser": "pause",
    "FakeUInputDevice": "uinput_pad",
    "InputEvent": "uinput_pad",
    "UInputDevice": "uinput_pad",
    "VirtualPad": "uinput_pad",
    "encode_state": "uinput_pad",
    "open_uinput_device": "uinput_pad",
    "open_virtual_pad": "uinput_pad",
    "Region": "window",
    "WindowInfo": "window",
    "choose_window": "window",
    "ScreenCapture": "capture",
    "find_window": "capture",
    "list_windows": "capture",
    "VGamepadPad": "windows",
    "DesktopGameEnv": "env",
    "make_desktop_env": "env",
    "WindowsBackend": "windows",
    "KeyboardMousePad": "keys",
    "keys_down": "keys",
    "KeyMap": "keymap",
    "load_keymap": "keymap",
    "wait_for_window": "capture",
    "process_state": "pause",
}

__all__ = [
    "AmbiguousProcessError",
    "DesktopError",
    "DesktopGameEnv",
    "DisplayUnavailableError",
    "FakeUInputDevice",
    "InputEvent",
    "KeyMap",
    "KeyboardMousePad",
    "PadUnavailableError",
    "Pauser",
    "PlatformNotSupportedError",
    "ProcessCandidate",
    "ProcessNotFoundError",
    "ProcessPauser",
    "Region",
    "ScreenCapture",
    "UInputDevice",
    "VGamepadPad",
    "VirtualPad",
    "WindowInfo",
    "WindowNotFoundError",
    "WindowsBackend",
    "choose_window",
    "encode_state",
    "find_process",
    "find_window",
    "keys_down",
    "list_windows",
    "load_keymap",
    "make_desktop_env",
    "open_uinput_device",
    "open_virtual_pad",
    "process_state",
    "wait_for_window",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .capture import ScreenCapture, find_window, list_windows, wait_for_window
    from .env import DesktopGameEnv, make_desktop_env
    from .errors import (
        AmbiguousProcessError,
        DesktopError,
        DisplayUnavailableError,
        PadUnavailableError,
        PlatformNotSupportedError,
        ProcessNotFoundError,
        WindowNotFoundError,
    )
    from .keymap import KeyMap, load_keymap
    from .keys import KeyboardMousePad, keys_down
    from .pause import Pauser, ProcessPauser, process_state
    from .process import ProcessCandidate, find_process
    from .uinput_pad import (
        FakeUInputDevice,
        InputEvent,
        UInputDevice,
        VirtualPad,
        encode_state,
        open_uinput_device,
        open_virtual_pad,
    )
    from .window import Region, WindowInfo, choose_window
    from .windows import VGamepadPad, WindowsBackend
