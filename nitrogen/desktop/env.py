"""A desktop game as a gamepad environment: capture its window, drive a virtual pad, pause it.

Same contract as :class:`nitrogen.envs.GamepadEnv` (``reset``/``step``/``close``, ``fps``,
``spec_id``), plus ``pause()``/``resume()``, which the play loop's sync mode calls around each
prediction. A live game runs on its own: ``step`` sends the pad state and grabs the next frame.
The env says it is ``live``, so the play loop paces it on its monotonic game clock in both modes:
in sync mode the game is stopped (SIGSTOP) while the policy thinks, resumed, and then each action
of the chunk is held for one frame (1/60 s), as the original player does.

``timeline`` keeps the monotonic times (``time.monotonic()``) of the last pauses, resumes and
steps, for tests and benchmarks that check the pacing.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..gamepad import NEUTRAL, GamepadState


class _Capture(Protocol):
    def grab(self) -> np.ndarray: ...


class _Pad(Protocol):
    def send(self, state: GamepadState) -> Any: ...

    def reset(self) -> Any: ...


class _Pauser(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...


TIMELINE_EVENTS = 4096
"""How many (event, time) pairs :attr:`DesktopGameEnv.timeline` keeps."""


class DesktopGameEnv:
    """A running game process, seen through ``capture``, played through ``pad``."""

    live = True
    """A live game: the play loop keeps it on the game clock in sync mode too."""

    def __init__(self, name: str, capture: _Capture, pad: _Pad, pauser: _Pauser | None = None, fps: float = 60.0):
        self.name, self.spec_id, self.fps = name, f"desktop:{name}", fps
        self.capture, self.pad, self.pauser = capture, pad, pauser
        self.episode_seed: int | None = None
        self.timeline: deque[tuple[str, float]] = deque(maxlen=TIMELINE_EVENTS)
        self._closed = False

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Release every control and return the current frame (a live game has no reset)."""
        self.episode_seed = seed
        self.pad.reset()
        return self.capture.grab(), {}

    def step(self, state: GamepadState) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.pad.send(state)
        self.timeline.append(("step", time.monotonic()))
        return self.capture.grab(), 0.0, False, False, {}

    def pause(self) -> None:
        if self.pauser is not None:
            self.pauser.pause()
            self.timeline.append(("pause", time.monotonic()))

    def resume(self) -> None:
        if self.pauser is not None:
            self.timeline.append(("resume", time.monotonic()))
            self.pauser.resume()

    def close(self) -> None:
        """Resume the game, release the pad, and close it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.resume()
            self.pad.send(NEUTRAL)
        finally:
            for part in (self.pauser, self.pad, self.capture):
                close = getattr(part, "close", None)
                if close is not None:
                    close()


def make_desktop_env(
    name_or_pid: str | int,
    *,
    pause: bool = True,
    input: Literal["pad", "keys"] = "pad",
    keymap: str | Path | None = None,
    display: str | None = None,
    window_timeout: float = 10.0,
) -> DesktopGameEnv:
    """Find the game's process (a name, case-insensitive, or a PID), its window, and an input device.

    ``input="pad"`` is the virtual gamepad (uinput on Linux, vgamepad on Windows); ``"keys"`` is
    the keyboard and mouse through XTEST (Linux/X11), with ``keymap`` (a preset name or a file,
    default ``arrows``). The window is waited for up to ``window_timeout`` seconds. On Linux the
    process that is paused is the one that owns the window, which is the game itself when
    ``name_or_pid`` names a launcher.
    """
    from .process import find_process

    if input not in ("pad", "keys"):
        raise ValueError(f"input must be 'pad' or 'keys', got {str(input)[:20]!r}")
    process = find_process(name_or_pid)
    if sys.platform == "win32":
        if input == "keys":
            from .errors import PlatformNotSupportedError

            raise PlatformNotSupportedError("--input keys sends X11 (XTEST) events: it runs on Linux only")
        from .windows import WindowsBackend

        backend = WindowsBackend(process.pid)
        return DesktopGameEnv(process.name(), backend.capture, backend.pad, backend.pauser if pause else None)
    from .capture import ScreenCapture, find_window
    from .pause import ProcessPauser

    window = find_window(process.pid, display=display, timeout=window_timeout)
    capture = ScreenCapture(window, display=display, follow=window.id)
    pad: _Pad
    if input == "keys":
        from .keys import KeyboardMousePad

        pad = KeyboardMousePad(keymap or "arrows", window=window.id, display=display)
    else:
        from .uinput_pad import open_virtual_pad

        pad = open_virtual_pad()
    pauser = ProcessPauser(window.pid or process.pid) if pause else None
    return DesktopGameEnv(process.name(), capture, pad, pauser)
