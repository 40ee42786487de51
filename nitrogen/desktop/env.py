"""A desktop game as a gamepad environment: capture its window, drive a virtual pad, pause it.

Same contract as :class:`nitrogen.envs.GamepadEnv` (``reset``/``step``/``close``, ``fps``,
``spec_id``), plus ``pause()``/``resume()``, which the play loop's sync mode calls around each
prediction. A live game runs on its own: ``step`` sends the pad state and grabs the next frame,
and the play loop's clock paces the frames.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

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


class DesktopGameEnv:
    """A running game process, seen through ``capture``, played through ``pad``."""

    def __init__(self, name: str, capture: _Capture, pad: _Pad, pauser: _Pauser | None = None, fps: float = 60.0):
        self.name, self.spec_id, self.fps = name, f"desktop:{name}", fps
        self.capture, self.pad, self.pauser = capture, pad, pauser
        self.episode_seed: int | None = None
        self._closed = False

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Release every control and return the current frame (a live game has no reset)."""
        self.episode_seed = seed
        self.pad.reset()
        return self.capture.grab(), {}

    def step(self, state: GamepadState) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.pad.send(state)
        return self.capture.grab(), 0.0, False, False, {}

    def pause(self) -> None:
        if self.pauser is not None:
            self.pauser.pause()

    def resume(self) -> None:
        if self.pauser is not None:
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
            close = getattr(self.pad, "close", None)
            if close is not None:
                close()


def make_desktop_env(name_or_pid: str | int, *, pause: bool = True) -> DesktopGameEnv:
    """Find the game's process (a name, case-insensitive, or a PID), its window, and a virtual pad."""
    from .process import find_process

    process = find_process(name_or_pid)
    if sys.platform == "win32":
        from .windows import WindowsBackend

        backend = WindowsBackend(process.pid)
        return DesktopGameEnv(process.name(), backend.capture, backend.pad, backend.pauser if pause else None)
    from .capture import ScreenCapture
    from .pause import ProcessPauser
    from .uinput_pad import open_virtual_pad

    capture = ScreenCapture.for_process(process.pid)
    pad = open_virtual_pad()
    return DesktopGameEnv(process.name(), capture, pad, ProcessPauser(process.pid) if pause else None)
