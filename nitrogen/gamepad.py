"""The gamepad state that environments and virtual pads consume, and its conversion from chunks.

A :class:`GamepadState` is what one 60 Hz frame of play sends to a pad: the 15 pad buttons of the
released layout (the 4 virtual right-stick buttons are never sent; the 2 triggers become axes),
two sticks in [-1, 1] and two triggers in [0, 1]. Sticks keep the model's axis convention,
:data:`STICK_Y_DOWN`: positive y points down, as in SDL and evdev (the original player negates y
for an XInput pad, whose positive y is up), and a pad backend applies any device-specific flip.
The model's triggers are binary buttons, so they become 0.0 or 1.0 here.

This module is the one place that converts between pad input and the 25-dim action vector, both
ways: :func:`pack_pad` (pressed buttons and sticks of many frames -> vectors, the four virtual
right-stick buttons derived from ``j_right`` with :data:`VIRTUAL_THRESHOLD`), which the dataset
mapping, the recorder and :meth:`GamepadState.to_action_vector` use, and :func:`state_from_action`
(a vector -> the state to send). Buttons and triggers are pressed above :data:`BUTTON_THRESHOLD`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .actions import (
    ACTION_DIM,
    BUTTON_INDEX,
    BUTTON_ORDERS,
    BUTTON_SLICE,
    BUTTON_THRESHOLD,
    BUTTONS,
    LEFT_STICK_SLICE,
    PHYSICAL_BUTTONS,
    RIGHT_STICK_SLICE,
    TRIGGERS,
    VIRTUAL_BUTTONS,
    unpack_actions,
)

PAD_BUTTONS: tuple[str, ...] = tuple(b for b in PHYSICAL_BUTTONS if b not in TRIGGERS)
"""The 15 buttons a pad has, in the layout's (alphabetical) order; the triggers are axes."""

VIRTUAL_THRESHOLD = 0.5
"""A virtual right-stick button is pressed when ``j_right`` leans past this along its axis."""

_PHYSICAL_INDEX = np.asarray([BUTTON_INDEX[b] for b in PHYSICAL_BUTTONS])


def virtual_buttons(j_right: np.ndarray, threshold: float = VIRTUAL_THRESHOLD) -> dict[str, np.ndarray]:
    """The four virtual buttons of ``(N, 2)`` right-stick values (+y points down, so up is -y)."""
    x, y = j_right[:, 0], j_right[:, 1]
    return {
        "RIGHT_UP": y < -threshold,
        "RIGHT_BOTTOM": y > threshold,
        "RIGHT_LEFT": x < -threshold,
        "RIGHT_RIGHT": x > threshold,
    }


def pack_pad(
    pressed: np.ndarray, j_left: np.ndarray, j_right: np.ndarray, threshold: float = VIRTUAL_THRESHOLD
) -> np.ndarray:
    """Pad input of ``N`` frames -> ``(N, 25)`` float32 action vectors.

    ``pressed (N, 17)`` is boolean, in :data:`~nitrogen.actions.PHYSICAL_BUTTONS` order (triggers
    included); ``j_left``/``j_right (N, 2)`` are in [-1, 1]. Sticks are stored as ``(v + 1) / 2``
    and the virtual buttons come from ``j_right``.
    """
    pressed, j_left, j_right = (
        np.asarray(pressed, bool),
        np.asarray(j_left, np.float32),
        np.asarray(j_right, np.float32),
    )
    N = pressed.shape[0]
    if pressed.shape != (N, len(PHYSICAL_BUTTONS)) or j_left.shape != (N, 2) or j_right.shape != (N, 2):
        raise ValueError(
            f"pack_pad needs pressed (N, {len(PHYSICAL_BUTTONS)}) and sticks (N, 2), got "
            f"{pressed.shape}, {j_left.shape}, {j_right.shape}"
        )
    out = np.zeros((N, ACTION_DIM), dtype=np.float32)
    out[:, _PHYSICAL_INDEX] = pressed
    for name, on in virtual_buttons(j_right, threshold).items():
        out[:, BUTTON_INDEX[name]] = on
    out[:, LEFT_STICK_SLICE] = (j_left + 1.0) / 2.0
    out[:, RIGHT_STICK_SLICE] = (j_right + 1.0) / 2.0
    return out


def check_button_order(order: str) -> str:
    """``order`` if it names one of :data:`~nitrogen.actions.BUTTON_ORDERS`, else a ``ValueError``."""
    if order not in BUTTON_ORDERS:
        raise ValueError(f"unknown button order {str(order)[:40]!r}; use one of {', '.join(BUTTON_ORDERS)}")
    return order


def reorder_buttons(actions: Any, order: str, *, to: str) -> Any:
    """The one permutation between a model's button dims and the layout's (:data:`~nitrogen.actions.BUTTONS`).

    ``actions (..., 25)`` (numpy or torch). ``to="layout"``: from the model's ``order`` (dim ``i`` is
    ``BUTTON_ORDERS[order][i]``) to the layout, as the engine does with what the model samples;
    ``to="model"``: the inverse, for training targets. Sticks are not moved. The default order,
    ``alphabetical``, is the layout itself: then ``actions`` is returned as it is.
    """
    check_button_order(order)
    if to not in ("layout", "model"):
        raise ValueError(f"to must be 'layout' or 'model', got {to!r}")
    names = BUTTON_ORDERS[order]
    model_index = [BUTTON_INDEX[name] for name in names]  # layout dim of the model's dim i
    if model_index == list(range(len(names))):
        return actions
    if to == "model":
        index = model_index + list(range(BUTTON_SLICE.stop, ACTION_DIM))  # model dim i <- layout dim
    else:
        inverse = [names.index(name) for name in BUTTONS]  # layout dim j <- model dim
        index = inverse + list(range(BUTTON_SLICE.stop, ACTION_DIM))
    if type(actions).__module__.startswith("torch"):
        import torch

        return actions[..., torch.as_tensor(index, device=actions.device)]
    return np.asarray(actions)[..., index]


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

    def physical_buttons(self) -> frozenset[str]:
        """The pressed :data:`~nitrogen.actions.PHYSICAL_BUTTONS`: pad buttons, and each trigger
        whose axis is at least :data:`~nitrogen.actions.BUTTON_THRESHOLD` (the model's triggers are buttons)."""
        triggers = {"LEFT_TRIGGER": self.left_trigger, "RIGHT_TRIGGER": self.right_trigger}
        return self.buttons | {name for name, v in triggers.items() if v >= BUTTON_THRESHOLD}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GamepadState:
        """The inverse of :meth:`to_dict` (a line of a run's ``actions.jsonl``); validates like the constructor."""
        try:
            return cls(
                buttons=frozenset(str(b) for b in doc.get("buttons", ())),
                left_stick=(float(doc.get("left_stick", (0, 0))[0]), float(doc.get("left_stick", (0, 0))[1])),
                right_stick=(float(doc.get("right_stick", (0, 0))[0]), float(doc.get("right_stick", (0, 0))[1])),
                left_trigger=float(doc.get("left_trigger", 0.0)),
                right_trigger=float(doc.get("right_trigger", 0.0)),
            )
        except (TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a pad state: {exc}") from None

    def to_action_vector(self) -> np.ndarray:
        """Back to the model's 25-dim layout through :func:`pack_pad` (virtual buttons from the right stick)."""
        held = self.physical_buttons()
        pressed = np.asarray([[b in held for b in PHYSICAL_BUTTONS]])
        return pack_pad(pressed, np.asarray([self.left_stick]), np.asarray([self.right_stick]))[0]


NEUTRAL = GamepadState()


class PressCounter:
    """Per-button press rates of played frames: each state goes through the codec
    (:meth:`GamepadState.to_action_vector`), so the 4 virtual buttons count as the right stick
    leans. Run folders (``episode.json``) and ``nitrogen eval`` report :meth:`rates`."""

    def __init__(self) -> None:
        self.frames = 0
        self.counts = np.zeros(len(BUTTONS), dtype=np.int64)

    def add(self, state: GamepadState) -> None:
        self.counts += state.to_action_vector()[BUTTON_SLICE] > BUTTON_THRESHOLD
        self.frames += 1

    def merge(self, other: PressCounter) -> None:
        self.counts += other.counts
        self.frames += other.frames

    def rates(self) -> dict[str, float]:
        """Button name -> share of frames it was pressed on, in layout order (0.0 for every button before any frame)."""
        share = self.counts / max(self.frames, 1)
        return {name: round(float(v), 6) for name, v in zip(BUTTONS, share, strict=True)}


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
