"""Declarative tables that turn a :class:`GamepadState` into a game's native action, and back.

Each game family is a small data table plus two generic functions that read it; to support a new
game, add rows, not code.

**Atari (ALE).** A pad state is reduced to ``(dx, dy, fire)``:

* ``dx`` is -1 (left), 0 or +1 (right); ``dy`` is -1 (down), 0 or +1 (up), screen-up positive.
* **D-pad priority**: when any D-pad button is pressed, the direction comes from the D-pad alone
  (:data:`DPAD_DIRECTIONS`; opposite buttons cancel) and the stick is ignored. Otherwise it comes
  from the left stick, each axis separately: an axis counts only when ``|value| >``
  :data:`STICK_DEAD_ZONE` (0.5), so a 45-degree full tilt (0.71, 0.71) is a diagonal.
* **Stick sign**: :data:`STICK_UP_Y` is the stick ``y`` of a stick pushed *up*. It is ``-1``:
  the model's sticks use the SDL/screen convention, **positive y = down**. Evidence: the original
  NitroGen player negates y before writing it to an XInput pad, whose positive y is up. Flip this
  one constant to change the convention everywhere.
* ``fire`` is true when any of :data:`FIRE_BUTTONS` (SOUTH, EAST, WEST, NORTH) is pressed.

``(dx, dy, fire)`` names one row of :data:`ALE_ACTION_TABLE` (the 18 ALE actions, in
``ale_py.Action`` order). A game whose (minimal) action set lacks that action gets the first
available one in :data:`FALLBACK_ORDER`: drop FIRE; then drop the vertical component (keeping
FIRE); then keep only the horizontal; then drop the horizontal (vertical + FIRE, vertical);
then FIRE alone; then NOOP. Direction beats FIRE and horizontal beats vertical because the
single-axis 2600 games are mostly horizontal (Breakout, Space Invaders...). The rule is
deterministic and only depends on the action set.

The inverse, :func:`ale_action_to_state`, gives a *canonical* state: D-pad buttons for the
direction, SOUTH for fire. So ``state -> action -> canonical state -> action`` is stable.

**CarRacing-v3** (continuous ``[steer, gas, brake]``): :data:`CAR_RACING_BINDINGS` binds left
stick x to steer in [-1, 1] (negative = left), the right trigger to gas and the left trigger to
brake, both in [0, 1].
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ..gamepad import GamepadState

# ---------------------------------------------------------------------------------------------
# Atari
# ---------------------------------------------------------------------------------------------

STICK_UP_Y: float = -1.0
"""Stick ``y`` when the stick is pushed up: -1 means positive y is down (see the module doc)."""

STICK_DEAD_ZONE: float = 0.5
"""A stick axis counts as pushed only when its absolute value is strictly above this."""

DPAD_DIRECTIONS: dict[str, tuple[int, int]] = {
    "DPAD_UP": (0, 1),
    "DPAD_DOWN": (0, -1),
    "DPAD_LEFT": (-1, 0),
    "DPAD_RIGHT": (1, 0),
}
"""D-pad button -> ``(dx, dy)`` with ``dy`` positive up; pressed buttons add, opposites cancel."""

FIRE_BUTTONS: frozenset[str] = frozenset({"SOUTH", "EAST", "WEST", "NORTH"})
"""Any of these pressed means FIRE."""

CANONICAL_FIRE_BUTTON: str = "SOUTH"
"""The button :func:`ale_action_to_state` presses for FIRE."""


@dataclass(frozen=True)
class AleActionRow:
    """One ALE action and the ``(dx, dy, fire)`` it stands for (``dy`` positive up)."""

    name: str
    dx: int
    dy: int
    fire: bool


ALE_ACTION_TABLE: tuple[AleActionRow, ...] = (
    AleActionRow("NOOP", 0, 0, False),
    AleActionRow("FIRE", 0, 0, True),
    AleActionRow("UP", 0, 1, False),
    AleActionRow("RIGHT", 1, 0, False),
    AleActionRow("LEFT", -1, 0, False),
    AleActionRow("DOWN", 0, -1, False),
    AleActionRow("UPRIGHT", 1, 1, False),
    AleActionRow("UPLEFT", -1, 1, False),
    AleActionRow("DOWNRIGHT", 1, -1, False),
    AleActionRow("DOWNLEFT", -1, -1, False),
    AleActionRow("UPFIRE", 0, 1, True),
    AleActionRow("RIGHTFIRE", 1, 0, True),
    AleActionRow("LEFTFIRE", -1, 0, True),
    AleActionRow("DOWNFIRE", 0, -1, True),
    AleActionRow("UPRIGHTFIRE", 1, 1, True),
    AleActionRow("UPLEFTFIRE", -1, 1, True),
    AleActionRow("DOWNRIGHTFIRE", 1, -1, True),
    AleActionRow("DOWNLEFTFIRE", -1, -1, True),
)
"""The 18 ALE actions in ``ale_py.Action`` value order (row ``i`` is ``Action(i)``)."""

FALLBACK_ORDER: tuple[tuple[bool, bool, bool], ...] = (
    # (keep horizontal, keep vertical, keep fire), tried in order; the first available action wins
    (True, True, True),
    (True, True, False),
    (True, False, True),
    (True, False, False),
    (False, True, True),
    (False, True, False),
    (False, False, True),
    (False, False, False),
)
"""How an action missing from a game's action set degrades (see the module docstring)."""

ALE_ACTIONS: tuple[str, ...] = tuple(row.name for row in ALE_ACTION_TABLE)
"""The full 18-action set, in ALE order."""

_ROW_BY_KEY: dict[tuple[int, int, bool], AleActionRow] = {(r.dx, r.dy, r.fire): r for r in ALE_ACTION_TABLE}
_ROW_BY_NAME: dict[str, AleActionRow] = {r.name: r for r in ALE_ACTION_TABLE}


def _sign(value: float, dead_zone: float) -> int:
    return 1 if value > dead_zone else -1 if value < -dead_zone else 0


def pad_direction(state: GamepadState) -> tuple[int, int]:
    """``(dx, dy)`` in {-1, 0, 1}, ``dy`` positive up: the D-pad if any is pressed, else the stick."""
    pressed = [DPAD_DIRECTIONS[b] for b in DPAD_DIRECTIONS if b in state.buttons]
    if pressed:
        return sum(d[0] for d in pressed), sum(d[1] for d in pressed)
    x, y = state.left_stick
    return _sign(x, STICK_DEAD_ZONE), _sign(y * STICK_UP_Y, STICK_DEAD_ZONE)


def pad_fire(state: GamepadState) -> bool:
    """Whether any of :data:`FIRE_BUTTONS` is pressed."""
    return not FIRE_BUTTONS.isdisjoint(state.buttons)


def resolve_ale_action(dx: int, dy: int, fire: bool, available: Collection[str] | None = None) -> str:
    """The ALE action name for ``(dx, dy, fire)``, degraded by :data:`FALLBACK_ORDER` if needed.

    ``available`` is the game's action set (names); ``None`` means all 18 actions.
    """
    if available is not None:
        unknown = set(available) - set(ALE_ACTIONS)
        if unknown:
            raise ValueError(f"unknown ALE action names {sorted(unknown)}; valid names are {list(ALE_ACTIONS)}")
    for keep_h, keep_v, keep_fire in FALLBACK_ORDER:
        row = _ROW_BY_KEY[(dx if keep_h else 0, dy if keep_v else 0, fire and keep_fire)]
        if available is None or row.name in available:
            return row.name
    raise ValueError(f"the action set {sorted(available or ())} has no NOOP to fall back on")


GAME_DIRECTION_REMAP: dict[str, dict[tuple[int, int], tuple[int, int]]] = {
    # Pong's paddle moves vertically, but its action set names up RIGHT and down LEFT.
    "Pong": {(0, 1): (1, 0), (0, -1): (-1, 0)},
}
"""Per game: pad direction ``(dx, dy)`` -> the ALE direction that does that on screen."""

Remap = dict[tuple[int, int], tuple[int, int]]


def state_to_ale_action(
    state: GamepadState, available: Collection[str] | None = None, remap: Remap | None = None
) -> str:
    """The ALE action name that ``state`` maps to, within ``available`` (``None``: all 18).

    ``remap`` (from :data:`GAME_DIRECTION_REMAP`) first turns a pad direction into the game's own.
    """
    dx, dy = pad_direction(state)
    if remap:
        dx, dy = remap.get((dx, dy), (dx, dy))
    return resolve_ale_action(dx, dy, pad_fire(state), available)


def ale_action_to_state(action: str, remap: Remap | None = None) -> GamepadState:
    """The canonical pad state for an ALE action name: D-pad for directions, SOUTH for FIRE."""
    try:
        row = _ROW_BY_NAME[action]
    except KeyError:
        raise ValueError(f"unknown ALE action {action!r}; valid names are {list(ALE_ACTIONS)}") from None
    dx, dy = {v: k for k, v in (remap or {}).items()}.get((row.dx, row.dy), (row.dx, row.dy))
    buttons = {b for b, (bx, by) in DPAD_DIRECTIONS.items() if (bx and bx == dx) or (by and by == dy)}
    if row.fire:
        buttons.add(CANONICAL_FIRE_BUTTON)
    return GamepadState(buttons=frozenset(buttons))


# ---------------------------------------------------------------------------------------------
# Continuous games (CarRacing)
# ---------------------------------------------------------------------------------------------

_CONTROL_SLOTS: dict[str, tuple[str, int | None]] = {
    "left_stick.x": ("left_stick", 0),
    "left_stick.y": ("left_stick", 1),
    "right_stick.x": ("right_stick", 0),
    "right_stick.y": ("right_stick", 1),
    "left_trigger": ("left_trigger", None),
    "right_trigger": ("right_trigger", None),
}
"""Analog pad controls a binding may read: name -> (GamepadState field, index in a stick tuple)."""


@dataclass(frozen=True)
class AxisBinding:
    """One component of a continuous action read from one analog control, clipped to [low, high]."""

    component: str
    control: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.control not in _CONTROL_SLOTS:
            raise ValueError(f"unknown pad control {self.control!r}; valid are {list(_CONTROL_SLOTS)}")


CAR_RACING_BINDINGS: tuple[AxisBinding, ...] = (
    AxisBinding("steer", "left_stick.x", -1.0, 1.0),
    AxisBinding("gas", "right_trigger", 0.0, 1.0),
    AxisBinding("brake", "left_trigger", 0.0, 1.0),
)
"""CarRacing-v3's ``Box([-1, 0, 0], [1, 1, 1])`` action, component by component."""


def _read_control(state: GamepadState, control: str) -> float:
    field, index = _CONTROL_SLOTS[control]
    value = getattr(state, field)
    return float(value if index is None else value[index])


def state_to_continuous(state: GamepadState, bindings: Sequence[AxisBinding]) -> np.ndarray:
    """The ``float32`` action vector for ``state``: one entry per binding, in order."""
    values = [min(max(_read_control(state, b.control), b.low), b.high) for b in bindings]
    return np.asarray(values, dtype=np.float32)


def continuous_to_state(action: Sequence[float] | np.ndarray, bindings: Sequence[AxisBinding]) -> GamepadState:
    """The pad state that produces ``action`` (unbound controls neutral): the inverse mapping."""
    values = np.asarray(action, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(bindings):
        raise ValueError(f"action has {values.shape[0]} entries, the bindings {len(bindings)}")
    sticks = {"left_stick": [0.0, 0.0], "right_stick": [0.0, 0.0]}
    triggers = {"left_trigger": 0.0, "right_trigger": 0.0}
    for value, b in zip(values, bindings, strict=True):
        field, index = _CONTROL_SLOTS[b.control]
        clipped = float(min(max(value, b.low), b.high))
        if index is None:
            triggers[field] = clipped
        else:
            sticks[field][index] = clipped
    return GamepadState(
        left_stick=(sticks["left_stick"][0], sticks["left_stick"][1]),
        right_stick=(sticks["right_stick"][0], sticks["right_stick"][1]),
        left_trigger=triggers["left_trigger"],
        right_trigger=triggers["right_trigger"],
    )


def state_to_car_action(state: GamepadState) -> np.ndarray:
    """CarRacing-v3's ``[steer, gas, brake]`` for ``state``."""
    return state_to_continuous(state, CAR_RACING_BINDINGS)


def car_action_to_state(action: Sequence[float] | np.ndarray) -> GamepadState:
    """The pad state for a CarRacing-v3 ``[steer, gas, brake]`` action."""
    return continuous_to_state(action, CAR_RACING_BINDINGS)
