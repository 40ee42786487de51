"""The Windows backend: dxcam capture, a vgamepad (ViGEm) Xbox 360 pad, and a speed-hack pauser.

Importing this module works everywhere; the Windows-only packages (``dxcam``, ``vgamepad``,
``ctypes.windll``) are imported only when a backend object is built on Windows, and building one
elsewhere raises :class:`PlatformNotSupportedError`. The platform-independent parts are pure and
tested on Linux: the model-button -> XUSB table (:data:`XUSB_BUTTONS`), the stick/trigger
conversions, the window choice (:func:`nitrogen.desktop.window.choose_window`), and
:class:`VGamepadPad` / :class:`SpeedhackPauser` driven by injected fakes.

XInput conventions (what vgamepad takes): sticks in [-1, 1] with +y *up*, the opposite of the
model's (+y down, :data:`nitrogen.gamepad.STICK_Y_DOWN`), so y is negated here, as the original
client does (int form ``round(v * 32767)``); triggers in [0, 1] (int form
``round(v * 255)``); face buttons by position: SOUTH = A, EAST = B, WEST = X, NORTH = Y.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType, TracebackType
from typing import Any, Protocol

import numpy as np

from ..gamepad import NEUTRAL, PAD_BUTTONS, STICK_Y_DOWN, GamepadState
from .errors import PadUnavailableError, PlatformNotSupportedError, WindowNotFoundError
from .window import Region, WindowInfo, choose_window

__all__ = [
    "XUSB_BUTTONS",
    "DxcamCapture",
    "SpeedController",
    "SpeedhackPauser",
    "VGamepadPad",
    "WindowsBackend",
    "find_window_win32",
    "require_windows",
    "xinput_stick",
    "xinput_trigger",
    "xusb_button_mask",
]

XUSB_BUTTONS: Mapping[str, tuple[str, int]] = {
    "DPAD_UP": ("XUSB_GAMEPAD_DPAD_UP", 0x0001),
    "DPAD_DOWN": ("XUSB_GAMEPAD_DPAD_DOWN", 0x0002),
    "DPAD_LEFT": ("XUSB_GAMEPAD_DPAD_LEFT", 0x0004),
    "DPAD_RIGHT": ("XUSB_GAMEPAD_DPAD_RIGHT", 0x0008),
    "START": ("XUSB_GAMEPAD_START", 0x0010),
    "BACK": ("XUSB_GAMEPAD_BACK", 0x0020),
    "LEFT_THUMB": ("XUSB_GAMEPAD_LEFT_THUMB", 0x0040),
    "RIGHT_THUMB": ("XUSB_GAMEPAD_RIGHT_THUMB", 0x0080),
    "LEFT_SHOULDER": ("XUSB_GAMEPAD_LEFT_SHOULDER", 0x0100),
    "RIGHT_SHOULDER": ("XUSB_GAMEPAD_RIGHT_SHOULDER", 0x0200),
    "GUIDE": ("XUSB_GAMEPAD_GUIDE", 0x0400),
    "SOUTH": ("XUSB_GAMEPAD_A", 0x1000),
    "EAST": ("XUSB_GAMEPAD_B", 0x2000),
    "WEST": ("XUSB_GAMEPAD_X", 0x4000),
    "NORTH": ("XUSB_GAMEPAD_Y", 0x8000),
}
"""Model button -> (``vgamepad.XUSB_BUTTON`` member name, XInput ``wButtons`` bit)."""


def require_windows(what: str) -> None:
    """Raise :class:`PlatformNotSupportedError` naming ``what`` unless running on Windows."""
    if sys.platform != "win32":
        raise PlatformNotSupportedError(
            f"{what} needs Windows (this is {sys.platform}); on Linux use nitrogen.desktop.VirtualPad, "
            "ScreenCapture and ProcessPauser"
        )


def _import_windows_package(module: str, what: str) -> ModuleType:
    require_windows(what)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PadUnavailableError(f"{what} needs the `{module}` package: pip install {module}") from exc


def xinput_stick(x: float, y: float) -> tuple[int, int]:
    """A model stick (+y down) -> XInput int16 ``(x, y)`` (+y up): ``round(v * 32767)``, y negated."""
    cx, cy = _clamp_stick((x, y))
    return round(cx * 32767), round(cy * 32767)


def xinput_trigger(v: float) -> int:
    """A trigger in [0, 1] -> XInput [0, 255]: ``round(v * 255)``."""
    return round(max(0.0, min(1.0, float(v))) * 255)


def xusb_button_mask(buttons: Iterable[str]) -> int:
    """The XInput ``wButtons`` bitmask of a set of model button names."""
    mask = 0
    for name in buttons:
        try:
            mask |= XUSB_BUTTONS[name][1]
        except KeyError:
            raise ValueError(f"{name!r} is not a pad button; pad buttons are {list(PAD_BUTTONS)}") from None
    return mask


class _VGamepad(Protocol):
    """The part of ``vgamepad.VX360Gamepad`` a pad needs."""

    def press_button(self, button: Any) -> None: ...

    def release_button(self, button: Any) -> None: ...

    def left_joystick_float(self, x_value_float: float, y_value_float: float) -> None: ...

    def right_joystick_float(self, x_value_float: float, y_value_float: float) -> None: ...

    def left_trigger_float(self, value_float: float) -> None: ...

    def right_trigger_float(self, value_float: float) -> None: ...

    def update(self) -> None: ...


class VGamepadPad:
    """Sends :class:`GamepadState` frames to a vgamepad Xbox 360 pad.

    ``gamepad=None`` creates ``vgamepad.VX360Gamepad()`` (Windows only). ``button_values`` maps a
    model button to what ``press_button`` takes; by default ``vgamepad.XUSB_BUTTON.<member>`` for a
    real pad and the raw XInput bit for an injected one. A send presses/releases only the buttons
    that changed (in :data:`PAD_BUTTONS` order), sets both sticks and triggers, then calls
    ``update()`` once; a state identical to the last one sends nothing.
    """

    def __init__(self, gamepad: _VGamepad | None = None, button_values: Mapping[str, Any] | None = None) -> None:
        if gamepad is None:
            vg = _import_windows_package("vgamepad", "the vgamepad Xbox 360 pad")
            gamepad = vg.VX360Gamepad()
            if button_values is None:
                button_values = {name: getattr(vg.XUSB_BUTTON, member) for name, (member, _) in XUSB_BUTTONS.items()}
        self.gamepad = gamepad
        self.button_values: Mapping[str, Any] = button_values or {n: bit for n, (_, bit) in XUSB_BUTTONS.items()}
        self._last: GamepadState | None = None

    def send(self, state: GamepadState) -> bool:
        """Apply ``state``; returns whether a report was sent."""
        if not isinstance(state, GamepadState):
            raise TypeError(f"send() takes a GamepadState, got {type(state).__name__}")
        if state == self._last:
            return False
        before = self._last.buttons if self._last is not None else frozenset()  # a new pad has none pressed
        for name in PAD_BUTTONS:
            if name in state.buttons and name not in before:
                self.gamepad.press_button(self.button_values[name])
            elif name not in state.buttons and name in before:
                self.gamepad.release_button(self.button_values[name])
        self.gamepad.left_joystick_float(*_clamp_stick(state.left_stick))
        self.gamepad.right_joystick_float(*_clamp_stick(state.right_stick))
        self.gamepad.left_trigger_float(_clamp01(state.left_trigger))
        self.gamepad.right_trigger_float(_clamp01(state.right_trigger))
        self.gamepad.update()
        self._last = state
        return True

    def reset(self) -> bool:
        """Release everything and centre the sticks."""
        return self.send(NEUTRAL)


def _clamp_stick(stick: tuple[float, float]) -> tuple[float, float]:
    """Clamp to [-1, 1] and flip y into XInput's convention (+y up); the model's +y is down."""
    y_sign = -1.0 if STICK_Y_DOWN else 1.0
    return (max(-1.0, min(1.0, float(stick[0]))), y_sign * max(-1.0, min(1.0, float(stick[1]))))


def _clamp01(v: float) -> float:
    return max(0.0, min(1.0, float(v)))


class DxcamCapture:
    """Grabs a screen region with dxcam (Desktop Duplication) as RGB ``(H, W, 3)`` uint8.

    dxcam returns ``None`` when the screen has not changed since the last grab; the previous frame
    is returned again then.
    """

    def __init__(self, region: Region | WindowInfo, *, output_idx: int = 0) -> None:
        dxcam = _import_windows_package("dxcam", "dxcam screen capture")
        self.region = region.region if isinstance(region, WindowInfo) else region
        self._camera = dxcam.create(output_idx=output_idx, output_color="RGB")
        self._last: np.ndarray | None = None

    def grab(self) -> np.ndarray:
        frame = self._camera.grab(region=self.region.as_ltrb())
        if frame is None:
            if self._last is None:
                frame = np.zeros((self.region.height, self.region.width, 3), dtype=np.uint8)
            else:
                return self._last
        self._last = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
        return self._last

    def close(self) -> None:
        release = getattr(self._camera, "release", None)
        if callable(release):
            release()


class SpeedController(Protocol):
    """An xspeedhack-style client: sets the game's clock speed (1.0 normal, 0.0 frozen)."""

    def set_speed(self, speed: float) -> None: ...


class SpeedhackPauser:
    """Pauses a Windows game by setting its speed to ``paused_speed`` (a :class:`Pauser`).

    ``controller`` is anything with ``set_speed(float)``. By default it is an ``xspeedhack`` client
    attached to the game, as the original player does (``pip install xspeedhack``, Windows only);
    off Windows, construction without a controller raises :class:`PlatformNotSupportedError`.
    """

    def __init__(self, pid: int, controller: SpeedController | None = None, *, paused_speed: float = 0.0) -> None:
        if controller is None:
            require_windows("SpeedhackPauser")
            controller = _xspeedhack_client(pid)  # pragma: no cover - Windows only
        self.pid = pid
        self.controller = controller
        self.paused_speed = paused_speed
        self._paused = False

    @property
    def is_paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        if not self._paused:
            self.controller.set_speed(self.paused_speed)
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.controller.set_speed(1.0)

    def __enter__(self) -> SpeedhackPauser:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.resume()


def _enumerate_win32_windows(pids: set[int]) -> list[WindowInfo]:  # pragma: no cover - Windows only
    import ctypes
    from ctypes import wintypes

    user32 = ctypes.windll.user32  # type: ignore[attr-defined]
    found: list[WindowInfo] = []

    @ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.HWND, wintypes.LPARAM)  # type: ignore[attr-defined]
    def visit(hwnd: int, _: int) -> bool:
        owner = wintypes.DWORD()
        user32.GetWindowThreadProcessId(hwnd, ctypes.byref(owner))
        if owner.value not in pids:
            return True
        length = user32.GetWindowTextLengthW(hwnd)
        buf = ctypes.create_unicode_buffer(length + 1)
        user32.GetWindowTextW(hwnd, buf, length + 1)
        rect = wintypes.RECT()
        user32.GetClientRect(hwnd, ctypes.byref(rect))
        origin = wintypes.POINT(0, 0)
        user32.ClientToScreen(hwnd, ctypes.byref(origin))
        found.append(
            WindowInfo(
                int(hwnd or 0),
                buf.value,
                origin.x,
                origin.y,
                rect.right - rect.left,
                rect.bottom - rect.top,
                bool(user32.IsWindowVisible(hwnd)),
            )
        )
        return True

    user32.EnumWindows(visit, 0)
    return found


def find_window_win32(
    pid: int,
    *,
    title_hint: str | None = None,
    enumerate_windows: Callable[[set[int]], list[WindowInfo]] | None = None,
) -> WindowInfo:
    """The game window (client area) of ``pid``: largest visible, ties broken by ``title_hint``.

    ``enumerate_windows`` (PIDs -> that PIDs' top-level windows) defaults to ``EnumWindows`` and is
    Windows-only; tests inject a fake.
    """
    if enumerate_windows is None:
        require_windows("find_window_win32")
        enumerate_windows = _enumerate_win32_windows
    windows = enumerate_windows({pid})
    if not windows:
        raise WindowNotFoundError(f"process {pid} has no top-level window")
    return choose_window(windows, title_hint)


def _xspeedhack_client(pid: int) -> SpeedController:  # pragma: no cover - Windows only
    """Attach xspeedhack to the game process (its DLL must match the game's architecture)."""
    xsh = _import_windows_package("xspeedhack", "pausing a Windows game")
    try:
        return xsh.Client(process_id=pid, arch="x64")
    except Exception as exc:
        raise PadUnavailableError(f"could not attach xspeedhack to process {pid}: {exc}") from exc


class WindowsBackend:
    """Everything a Windows game loop needs for one game: its window, capture, pad and pauser."""

    def __init__(
        self, process: str | int, *, title_hint: str | None = None, speed_controller: SpeedController | None = None
    ) -> None:
        require_windows("WindowsBackend")
        from .process import find_process  # pragma: no cover - Windows only

        proc = find_process(process)  # pragma: no cover
        self.pid = proc.pid  # pragma: no cover
        self.window = find_window_win32(self.pid, title_hint=title_hint or proc.name())  # pragma: no cover
        self.capture = DxcamCapture(self.window)  # pragma: no cover
        self.pad = VGamepadPad()  # pragma: no cover
        self.pauser = SpeedhackPauser(self.pid, speed_controller)  # pragma: no cover

    def close(self) -> None:  # pragma: no cover - Windows only
        self.pad.reset()
        self.capture.close()
        if self.pauser is not None:
            self.pauser.resume()
