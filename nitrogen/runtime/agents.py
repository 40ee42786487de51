"""Agents that act frame by frame with access to the game itself: random play, scripted experts, a person.

A model :class:`~nitrogen.policy.Policy` sees only frames and returns chunks; an :class:`Agent`
may read the emulator (RAM, state) to decide one :class:`GamepadState` per frame. The episode loop
drives only policies: :class:`nitrogen.runtime.sources.AgentPolicy` is the one adapter that makes an
agent a policy (chunks of one action, the game's own frames).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..gamepad import NEUTRAL, GamepadState
from .experts import EXPERTS, NoExpertError


@runtime_checkable
class Agent(Protocol):
    """Decides one pad state per frame; may look at ``env`` (e.g. ``env.ale.getRAM()``)."""

    name: str

    def reset(self, env: Any, seed: int | None = None) -> None: ...

    def act(self, env: Any, frame: np.ndarray) -> GamepadState: ...


_DIRECTIONS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"DPAD_UP"}),
    frozenset({"DPAD_DOWN"}),
    frozenset({"DPAD_LEFT"}),
    frozenset({"DPAD_RIGHT"}),
)


class RandomAgent:
    """Random D-pad direction (or none) plus random FIRE, each choice held for 2-8 frames.

    Holding a choice for a few frames makes the play look like a person's rather than
    per-frame noise. ``seed`` makes it reproducible; :meth:`reset` with a seed re-seeds.
    """

    name = "random"

    def __init__(self, seed: int | None = None, *, min_hold: int = 2, max_hold: int = 8) -> None:
        if not 1 <= min_hold <= max_hold:
            raise ValueError(f"need 1 <= min_hold <= max_hold, got {min_hold}, {max_hold}")
        self.seed = seed
        self.min_hold, self.max_hold = min_hold, max_hold
        self._rng = np.random.default_rng(seed)
        self._state = NEUTRAL
        self._left = 0

    def reset(self, env: Any, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._state = NEUTRAL
        self._left = 0

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        if self._left <= 0:
            buttons = _DIRECTIONS[int(self._rng.integers(len(_DIRECTIONS)))]
            if self._rng.random() < 0.5:
                buttons = buttons | {"SOUTH"}
            self._state = GamepadState(buttons)
            self._left = int(self._rng.integers(self.min_hold, self.max_hold + 1))
        self._left -= 1
        return self._state


AGENT_KINDS: tuple[str, ...] = ("random", "scripted")


def make_agent(spec: str, env_id: str, seed: int | None = None) -> Agent:
    """An agent by name: ``"random"`` (any env) or ``"scripted"`` (an env in :data:`EXPERTS`).

    ``env_id`` is matched case-insensitively (``"ale:breakout"`` works). Raises ``ValueError``
    naming the valid choices for an unknown ``spec``, and :class:`NoExpertError` (a ``ValueError``) for
    an env without a scripted expert.
    """
    kind = spec.strip().lower()
    if kind == "random":
        return RandomAgent(seed)
    if kind == "scripted":
        by_key = {key.lower(): cls for key, cls in EXPERTS.items()}
        cls = by_key.get(env_id.strip().lower())
        if cls is None:
            raise NoExpertError(f"no scripted expert for env {env_id!r}; experts exist for {sorted(EXPERTS)}")
        return cls(seed)
    raise ValueError(f"unknown agent {spec!r}; expected one of {list(AGENT_KINDS)}")
