"""Agents that act frame by frame with access to the game itself: scripted experts and random play.

A model :class:`~nitrogen.policy.Policy` sees only frames and returns chunks; an :class:`Agent`
may read the emulator (RAM, state) to decide one :class:`GamepadState` per frame. Recording and
evaluation drive both kinds.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..gamepad import GamepadState


@runtime_checkable
class Agent(Protocol):
    """Decides one pad state per frame; may look at ``env`` (e.g. ``env.ale.getRAM()``)."""

    name: str

    def reset(self, env: Any, seed: int | None = None) -> None: ...

    def act(self, env: Any, frame: np.ndarray) -> GamepadState: ...
