"""The one interface that play, record and evaluation drive, and what a policy says about itself.

A :class:`Policy` turns frames into action chunks (:class:`ActionChunk`) and describes itself with a typed
:class:`PolicySpec`: how many actions a chunk holds, how many frames after its observation the
first one is meant for, the square frame size it looks at, its step rate, its button order and its
games. The local :class:`~nitrogen.inference.session.InferenceSession`, the remote
:class:`~nitrogen.serving.client.ModelClient` (from the server's ``info``), the replay
and the scripted, random and human agents (through one adapter in :mod:`nitrogen.runtime.sources`)
all carry one. This module needs only numpy and pydantic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

# typing_extensions (a pydantic dependency) gives Python 3.12's isinstance() for runtime protocols on
# 3.10 and 3.11 too: members are looked up statically, so a lazy ``spec`` property (the remote
# client fetches it from the server) is not called by ``isinstance(obj, Policy)``.
from typing_extensions import Protocol, runtime_checkable

from .actions import ACTION_DIM, BUTTON_ORDERS, BUTTONS, DEFAULT_BUTTON_ORDER, NUM_BUTTONS, unpack_actions

# The bounds of a real-time chunking request (``predict(prefix=, delay=, chunking=, beta=)``), the
# same in a local session and on the wire.
CHUNKING_MODES = ("prefix", "rtc")
"""How a prefix conditions a chunk: ``prefix`` (hard replacement of the frozen actions at every
Euler step; no extra compute) or ``rtc`` (guided inpainting with a vector-Jacobian product)."""
MAX_PREFIX_ABS = 1e3
"""The largest magnitude of a prefix value (actions are in [-1, 1]; a prefix is a previous chunk's):
guidance towards huge targets would overflow the sampler."""
MAX_RTC_BETA = 1e3
"""The largest guidance cap a request may ask for."""


class PolicySpec(BaseModel):
    """What a policy is, typed: everything the episode loop needs to drive it.

    ``image_size`` is the side of the square frame the policy looks at (its vision tower's input,
    from the checkpoint); ``None`` means it takes the game's own frames unchanged (an agent that
    reads the emulator, a replay). ``action_shift``: action ``k`` of a chunk observed at frame ``t``
    is meant for frame ``t + action_shift + k``. ``step_rate_hz``: one action per frame of a game
    running at this rate. ``game_mapping``: game name -> id for a game-conditioned checkpoint.
    ``button_order``: the name (:data:`~nitrogen.actions.BUTTON_ORDERS`) of the order in which the
    checkpoint's model emits its 21 button dims; chunks are always decoded to ``buttons``, the layout's
    order, whatever it is.
    ``supports_rtc``: ``predict`` also takes ``prefix``, ``delay``, ``chunking`` and ``beta``
    (real-time chunking); the episode loop plays other policies with naive chunking.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "policy"
    kind: str = Field("model", description="model, replay, scripted, random or human")
    action_horizon: int = Field(18, ge=1)
    action_shift: int = Field(0, ge=0)
    image_size: int | None = Field(None, gt=0)
    step_rate_hz: float = Field(60.0, gt=0)
    buttons: tuple[str, ...] = BUTTONS
    game_mapping: dict[str, int] | None = None
    button_order: str = DEFAULT_BUTTON_ORDER

    @field_validator("button_order")
    @classmethod
    def _known_order(cls, value: str) -> str:
        if value not in BUTTON_ORDERS:
            raise ValueError(f"unknown button order {value[:40]!r}; use one of {', '.join(BUTTON_ORDERS)}")
        return value

    supports_rtc: bool = Field(
        False,
        description="predict() takes a previous chunk's prefix (real-time chunking: prefix, delay, chunking, beta)",
    )

    @field_validator("buttons")
    @classmethod
    def _layout_buttons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(value) != BUTTONS:
            raise ValueError(f"a policy must use the released button order {list(BUTTONS)}, got {list(value)}")
        return tuple(value)

    @classmethod
    def from_info(cls, info: Mapping[str, Any], *, name: str | None = None, kind: str = "model") -> PolicySpec:
        """The spec of a model from its ``info()`` map (an engine's, a session's or a server's)."""
        return cls(
            name=name or str(info.get("name") or info.get("checkpoint") or "policy"),
            kind=kind,
            action_horizon=int(info["action_horizon"]),
            action_shift=int(info.get("action_shift", 0)),
            image_size=info.get("image_size"),
            step_rate_hz=float(info.get("step_rate_hz", 60.0)),
            buttons=tuple(info.get("buttons", BUTTONS)),
            game_mapping=dict(info["games"]) if info.get("games") else None,
            button_order=str(info.get("button_order", DEFAULT_BUTTON_ORDER)),
            supports_rtc=bool(info.get("supports_rtc", False)),
        )


@dataclass(frozen=True)
class ActionChunk(Mapping[str, Any]):
    """The next ``H`` gamepad actions predicted from one frame.

    ``j_left``/``j_right`` are ``(H, 2)`` sticks in [-1, 1], ``buttons`` is ``(H, 21)`` in {0, 1}
    (order: :data:`nitrogen.actions.BUTTONS`), and ``action_tensor`` is the raw ``(H, 25)`` output.
    It reads like a dict too: ``chunk["buttons"]``.
    """

    j_left: np.ndarray
    j_right: np.ndarray
    buttons: np.ndarray
    action_tensor: np.ndarray
    timing_ms: dict[str, float] = field(default_factory=dict)

    _KEYS = ("j_left", "j_right", "buttons", "action_tensor")

    @classmethod
    def from_action_tensor(cls, action: np.ndarray, timing_ms: dict[str, float] | None = None) -> ActionChunk:
        action = np.asarray(action, dtype=np.float32)
        if action.ndim != 2 or action.shape[1] != ACTION_DIM:
            raise ValueError(f"action tensor must be (H, {ACTION_DIM}), got {action.shape}")
        j_left, j_right, buttons = unpack_actions(action)
        return cls(j_left, j_right, buttons, action, dict(timing_ms or {}))

    @property
    def horizon(self) -> int:
        return int(self.action_tensor.shape[0])

    def __post_init__(self) -> None:
        H = self.action_tensor.shape[0]
        expected = {"j_left": (H, 2), "j_right": (H, 2), "buttons": (H, NUM_BUTTONS), "action_tensor": (H, ACTION_DIM)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {getattr(self, name).shape}")

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


@runtime_checkable
class Policy(Protocol):
    """Anything that turns game frames into action chunks."""

    @property
    def spec(self) -> PolicySpec:
        """What this policy is: horizon, action shift, frame size, step rate, buttons, games."""
        ...

    def predict(self, frame: Any) -> ActionChunk:
        """The next action chunk for this RGB frame (uint8 ``H x W x 3`` or a PIL image)."""
        ...

    def reset(self) -> None:
        """Forget the frame history, e.g. at the start of an episode."""
        ...

    def info(self) -> dict[str, Any]:
        """What this policy is, untyped and in full: checkpoint, settings, action layout."""
        ...

    def close(self) -> None:
        """Release what the policy holds (a socket, a window); safe to call twice."""
        ...
