"""The gamepad state that environments and virtual pads consume, and its conversion from chunks.

A :class:`GamepadState` is what one 60 Hz frame of play sends to a pad: the 15 pad buttons of the
released layout (the 4 virtual right-stick buttons are never sent; the 2 triggers become axes),
two sticks in [-1, 1] and two triggers in [0, 1]. Sticks keep the model's axis convention,
:data:`STICK_Y_DOWN`: positive y points down, as in SDL and evdev (the original player negates y
for an XInput pad, whose positive y is up), and a pad backend applies any device-specific flip.
The model's triggers are binary buttons, so they become 0.0 or 1.0 here. This module is the one
place that converts; the threshold is 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .actions import ACTION_DIM, BUTTON_INDEX, BUTTON_THRESHOLD, BUTTONS, TRIGGERS, VIRTUAL_BUTTONS, unpack_actions

PAD_BUTTONS: tuple[str, ...] = tuple(b for b in BUTTONS if b not in VIRTUAL_BUTTONS and b not in TRIGGERS)
"""The 15 buttons a pad has, in the layout's (alphabetical) order; the triggers are axes."""

MENU_BUTTONS: frozenset[str] = frozenset({"START", "GUIDE", "BACK"})

STICK_Y_DOWN = True
"""The model's stick y is positive downwards (SDL convention); XInput pads need it negated."""


@dataclass(frozen=True)
class GamepadState:
    """One frame of gamepad input."""

    buttons: frozenset[str] = frozenset()
    left_stick: tuple[float, float] = (0.0, 0.0)
    right_stick: tuple[float, float] = (0.0, 0.0)
    left_trigger: float = 0.0
    right_trigger: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.buttons) - set(PAD_BUTTONS)
        if unknown:
            raise ValueError(f"unknown or non-pad buttons {sorted(unknown)}; pad buttons are {list(PAD_BUTTONS)}")
        for name, (x, y) in (("left_stick", self.left_stick), ("right_stick", self.right_stick)):
            if not (-1.0 <= x <= 1.0 and -1.0 <= y <= 1.0):
                raise ValueError(f"{name} must be in [-1, 1], got {(x, y)}")
        for name, v in (("left_trigger", self.left_trigger), ("right_trigger", self.right_trigger)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    def pressed(self, button: str) -> bool:
        return button in self.buttons

    def without(self, buttons: Iterable[str]) -> GamepadState:
        """The same state with ``buttons`` released (e.g. the menu buttons)."""
        drop = frozenset(buttons)
        return GamepadState(
            self.buttons - drop, self.left_stick, self.right_stick, self.left_trigger, self.right_trigger
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "buttons": sorted(self.buttons),
            "left_stick": [round(float(v), 4) for v in self.left_stick],
            "right_stick": [round(float(v), 4) for v in self.right_stick],
            "left_trigger": float(self.left_trigger),
            "right_trigger": float(self.right_trigger),
        }

    def to_action_vector(self) -> np.ndarray:
        """Back to the model's 25-dim layout (virtual buttons 0), e.g. for recorded datasets."""
        vec = np.zeros(ACTION_DIM, dtype=np.float32)
        for b in self.buttons:
            vec[BUTTON_INDEX[b]] = 1.0
        vec[BUTTON_INDEX["LEFT_TRIGGER"]] = float(self.left_trigger >= BUTTON_THRESHOLD)
        vec[BUTTON_INDEX["RIGHT_TRIGGER"]] = float(self.right_trigger >= BUTTON_THRESHOLD)
        vec[21:23] = (np.asarray(self.left_stick) + 1) / 2
        vec[23:25] = (np.asarray(self.right_stick) + 1) / 2
        return vec


NEUTRAL = GamepadState()


def state_from_action(action: np.ndarray) -> GamepadState:
    """One raw ``(25,)`` action (a row of ``ActionChunk.action_tensor``) -> the pad state to send."""
    j_left, j_right, buttons = unpack_actions(np.asarray(action, dtype=np.float32)[None])
    pressed = {name for name, v in zip(BUTTONS, buttons[0], strict=True) if v > 0.5}
    return GamepadState(
        buttons=frozenset(pressed - VIRTUAL_BUTTONS - TRIGGERS),
        left_stick=(float(j_left[0, 0]), float(j_left[0, 1])),
        right_stick=(float(j_right[0, 0]), float(j_right[0, 1])),
        left_trigger=1.0 if "LEFT_TRIGGER" in pressed else 0.0,
        right_trigger=1.0 if "RIGHT_TRIGGER" in pressed else 0.0,
    )


def states_from_chunk(action_tensor: np.ndarray) -> list[GamepadState]:
    """All ``H`` pad states of a chunk's ``(H, 25)`` action tensor, in order."""
    return [state_from_action(row) for row in np.asarray(action_tensor)]
