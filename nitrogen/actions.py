"""The gamepad action layout, named once for the whole project.

A NitroGen action vector has 25 dims: ``[21 buttons | left stick x, y | right stick x, y]``.
Buttons are in alphabetical order. Sticks are stored in ``[0, 1]`` with 0.5 neutral, and decoded
to ``[-1, 1]``. Triggers are binary buttons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, Union

import numpy as np

if TYPE_CHECKING:  # torch stays optional here: the light client imports this module
    import torch

BUTTONS: tuple[str, ...] = (
    "BACK",
    "DPAD_DOWN",
    "DPAD_LEFT",
    "DPAD_RIGHT",
    "DPAD_UP",
    "EAST",
    "GUIDE",
    "LEFT_SHOULDER",
    "LEFT_THUMB",
    "LEFT_TRIGGER",
    "NORTH",
    "RIGHT_BOTTOM",
    "RIGHT_LEFT",
    "RIGHT_RIGHT",
    "RIGHT_SHOULDER",
    "RIGHT_THUMB",
    "RIGHT_TRIGGER",
    "RIGHT_UP",
    "SOUTH",
    "START",
    "WEST",
)
"""The 21 button names, in the order of action dims 0..20."""

BUTTON_ORDERS: dict[str, tuple[str, ...]] = {
    "alphabetical": BUTTONS,
    "grouped": (
        "DPAD_UP",
        "DPAD_DOWN",
        "DPAD_LEFT",
        "DPAD_RIGHT",
        "LEFT_SHOULDER",
        "RIGHT_SHOULDER",
        "LEFT_THUMB",
        "RIGHT_THUMB",
        "LEFT_TRIGGER",
        "RIGHT_TRIGGER",
        "SOUTH",
        "WEST",
        "EAST",
        "NORTH",
        "BACK",
        "START",
        "RIGHT_UP",
        "RIGHT_BOTTOM",
        "RIGHT_LEFT",
        "RIGHT_RIGHT",
        "GUIDE",
    ),
}
"""Named orders of a checkpoint's 21 button dims: which button the model's dim ``i`` is.

``alphabetical`` is the released code's decoding (``shared.py``), which golden parity follows, and
the default. ``grouped`` is the order a maintainer listed in the original repository's issue #43
(D-pad, shoulders/thumbs/triggers, SOUTH WEST EAST NORTH, BACK START, the four virtual right-stick
buttons, GUIDE; the order inside the D-pad, shoulder and virtual groups is our reading of it).
Only the real weights can tell which is right: compare a run's per-button press rates
(``episode.json``'s ``button_press_rate``) with the dataset's marginals. Whatever the model's order,
:data:`BUTTONS` stays the order of every action vector outside the model; the one permutation is
:func:`nitrogen.gamepad.reorder_buttons`."""
DEFAULT_BUTTON_ORDER = "alphabetical"

VIRTUAL_BUTTONS: frozenset[str] = frozenset({"RIGHT_UP", "RIGHT_BOTTOM", "RIGHT_LEFT", "RIGHT_RIGHT"})
"""Discretised right-stick directions: predicted, but never sent to a pad."""

TRIGGERS: frozenset[str] = frozenset({"LEFT_TRIGGER", "RIGHT_TRIGGER"})

PHYSICAL_BUTTONS: tuple[str, ...] = tuple(b for b in BUTTONS if b not in VIRTUAL_BUTTONS)
"""The 17 buttons a controller really has (the triggers included), in the layout's order. They are
the dataset's button columns (lower-cased); the 4 virtual ones are derived from the right stick."""

STICKS: tuple[str, ...] = ("left_x", "left_y", "right_x", "right_y")

NUM_BUTTONS = len(BUTTONS)
ACTION_DIM = NUM_BUTTONS + len(STICKS)
BUTTON_INDEX: dict[str, int] = {name: i for i, name in enumerate(BUTTONS)}

BUTTON_SLICE = slice(0, NUM_BUTTONS)
LEFT_STICK_SLICE = slice(NUM_BUTTONS, NUM_BUTTONS + 2)
RIGHT_STICK_SLICE = slice(NUM_BUTTONS + 2, NUM_BUTTONS + 4)

BUTTON_THRESHOLD = 0.5

Array = TypeVar("Array", bound=Union[np.ndarray, "torch.Tensor"])


def _is_tensor(x: object) -> bool:
    return type(x).__module__.startswith("torch")


def _cat(parts: list[Array]) -> Array:
    if _is_tensor(parts[0]):
        import torch

        return torch.cat(parts, dim=-1)  # type: ignore[return-value]
    return np.concatenate(parts, axis=-1).astype(np.float32, copy=False)


def pack_actions(buttons: Array, j_left: Array, j_right: Array) -> Array:
    """Pack decoded actions into the model's 25-dim layout.

    ``buttons (..., 21)`` in {0, 1}; sticks ``(..., 2)`` in [-1, 1]. Returns ``(..., 25)`` with the
    sticks mapped to [0, 1] by ``(v + 1) / 2``.
    """
    if buttons.shape[-1] != NUM_BUTTONS:
        raise ValueError(f"buttons must have {NUM_BUTTONS} entries in the last dim, got shape {tuple(buttons.shape)}")
    for name, stick in (("j_left", j_left), ("j_right", j_right)):
        if stick.shape[-1] != 2:
            raise ValueError(f"{name} must have 2 entries in the last dim, got shape {tuple(stick.shape)}")
        if stick.shape[:-1] != buttons.shape[:-1]:
            raise ValueError(f"{name} shape {tuple(stick.shape)} does not match buttons shape {tuple(buttons.shape)}")
    return _cat([buttons * 1.0, (j_left + 1) / 2, (j_right + 1) / 2])


def unpack_actions(action: Array) -> tuple[Array, Array, Array]:
    """Decode a raw ``(..., 25)`` action tensor into ``(j_left, j_right, buttons)``.

    Sticks are ``clamp(2x - 1, -1, 1)``; buttons are ``x > 0.5`` as 0/1 floats.
    """
    if action.shape[-1] != ACTION_DIM:
        raise ValueError(f"action must have {ACTION_DIM} entries in the last dim, got shape {tuple(action.shape)}")
    j_left = action[..., LEFT_STICK_SLICE] * 2 - 1
    j_right = action[..., RIGHT_STICK_SLICE] * 2 - 1
    pressed = action[..., BUTTON_SLICE] > BUTTON_THRESHOLD
    if _is_tensor(action):
        return j_left.clamp(-1, 1), j_right.clamp(-1, 1), pressed.to(action.dtype)
    return (
        np.clip(j_left, -1, 1).astype(np.float32),
        np.clip(j_right, -1, 1).astype(np.float32),
        pressed.astype(np.float32),
    )


def layout_description() -> list[dict[str, object]]:
    """One row per action dim: index, name, kind and encoding. Used by ``nitrogen info``."""
    rows: list[dict[str, object]] = []
    for i, name in enumerate(BUTTONS):
        kind = "virtual" if name in VIRTUAL_BUTTONS else ("trigger" if name in TRIGGERS else "button")
        rows.append({"index": i, "name": name, "kind": kind, "encoding": "pressed if > 0.5"})
    for j, name in enumerate(STICKS):
        rows.append({"index": NUM_BUTTONS + j, "name": name, "kind": "stick", "encoding": "[0, 1], 0.5 neutral"})
    return rows
