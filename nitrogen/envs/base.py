"""The contract every gamepad-driven environment follows, and the errors the subpackage raises.

A :class:`GamepadEnv` looks like a ``gymnasium.Env`` whose action is a
:class:`~nitrogen.gamepad.GamepadState` (what one frame of play sends to a pad) and whose
observation is the game screen:

* ``reset(seed=None) -> (frame, info)`` starts an episode. ``seed`` seeds the game; when it is
  ``None`` the ``seed`` given to the constructor is used on the first reset, and later resets
  continue the environment's own random stream (gymnasium's semantics).
* ``step(state) -> (frame, reward, terminated, truncated, info)`` advances the game by **one
  frame** (``1 / fps`` seconds of game time) with ``state`` held for that frame. ``terminated``
  means the game ended (e.g. no lives left); ``truncated`` means a time limit cut it short. After
  either, call ``reset()`` before stepping again.
* ``frame`` is always an RGB ``uint8`` array of shape ``frame_shape == (H, W, 3)``, a fresh array
  that the caller may keep. ``reward`` is a Python ``float``.
* ``info`` is a dict; it always holds ``"env_action"``, the game-native action that ``state``
  was mapped to (an ALE action name, a list of floats, ...), so recordings show what was sent.
* ``close()`` frees the emulator; it is idempotent. Environments are context managers.

Attributes: ``name`` (the game's display name), ``spec_id`` (the id :func:`nitrogen.envs.make_env`
accepts, e.g. ``"ale:Breakout"``), ``fps`` (native frames per second: 60 for the Atari 2600, 50
for CarRacing), ``frame_shape`` and ``episode_seed`` (the seed of the last reset, or ``None``).
``pause()`` / ``resume()`` stop and restart a live game's clock while a policy thinks; an
emulated game only advances when stepped, so for it they do nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import NitrogenError
from ..gamepad import GamepadState

Frame = np.ndarray
"""An RGB ``uint8`` array of shape ``(H, W, 3)``."""

Info = dict[str, Any]
StepResult = tuple[Frame, float, bool, bool, Info]


class UnknownEnvError(NitrogenError, ValueError):
    """An environment id, prefix or game name that is not supported; the message lists valid ones."""


class MissingDependencyError(NitrogenError, ImportError):
    """An environment family needs an optional package that is not installed."""


class GamepadEnv(ABC):
    """A game driven one frame at a time by :class:`GamepadState` inputs; see the module docstring.

    Subclasses set the attributes in ``__init__`` and implement :meth:`_reset`, :meth:`_step`
    and :meth:`_close`; this class enforces the contract (types, reset-before-step, closing).
    """

    name: str
    spec_id: str
    fps: int
    frame_shape: tuple[int, int, int]

    def __init__(self, seed: int | None = None) -> None:
        self._initial_seed = seed
        self.episode_seed: int | None = None
        self._needs_reset = True
        self._closed = False

    # -- the public contract -------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[Frame, Info]:
        """Start an episode; returns the first frame and an info dict."""
        self._check_open()
        if seed is None:
            seed, self._initial_seed = self._initial_seed, None
        self.episode_seed = seed
        frame, info = self._reset(seed)
        self._needs_reset = False
        return self._check_frame(frame), info

    def pause(self) -> None:
        """An emulated game waits between steps by itself: nothing to do."""

    def resume(self) -> None:
        """See :meth:`pause`."""

    def step(self, state: GamepadState) -> StepResult:
        """Hold ``state`` for one frame; returns ``(frame, reward, terminated, truncated, info)``."""
        self._check_open()
        if not isinstance(state, GamepadState):
            raise TypeError(f"step() takes a GamepadState, got {type(state).__name__}")
        if self._needs_reset:
            raise RuntimeError(f"{self.spec_id}: call reset() before step() (and again after an episode ends)")
        frame, reward, terminated, truncated, info = self._step(state)
        self._needs_reset = bool(terminated or truncated)
        return self._check_frame(frame), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        """Free the underlying emulator; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> GamepadEnv:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec_id!r}, fps={self.fps}, frame_shape={self.frame_shape})"

    # -- what subclasses implement -------------------------------------------------------------

    @abstractmethod
    def _reset(self, seed: int | None) -> tuple[Frame, Info]:
        """Reset the game (with ``seed`` when not ``None``)."""

    @abstractmethod
    def _step(self, state: GamepadState) -> StepResult:
        """Advance one frame with ``state``; ``info`` must hold ``"env_action"``."""

    @abstractmethod
    def _close(self) -> None:
        """Release resources (called once)."""

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.spec_id}: the environment is closed")

    def _check_frame(self, frame: np.ndarray) -> Frame:
        """Enforce the frame contract: RGB ``uint8`` of shape ``frame_shape``."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.shape != tuple(self.frame_shape):
            raise RuntimeError(
                f"{self.spec_id} produced a frame of shape {frame.shape} and dtype {frame.dtype}; "
                f"expected {tuple(self.frame_shape)} uint8"
            )
        return frame
