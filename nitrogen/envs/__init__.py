"""Games a NitroGen agent can play headless, each driven by :class:`~nitrogen.gamepad.GamepadState`.

>>> from nitrogen.envs import make_env
>>> with make_env("ale:Breakout", seed=0) as env:          # doctest: +SKIP
...     frame, info = env.reset()                          # (210, 160, 3) uint8
...     frame, reward, terminated, truncated, info = env.step(state)

Ids are ``<prefix>:<name>`` (see :mod:`nitrogen.envs.registry` and :func:`list_envs`); the
env contract is in :mod:`nitrogen.envs.base`; the pad -> game-action tables, with their
conventions (stick sign, D-pad priority, fallback rule), are in :mod:`nitrogen.envs.mappings`.
The game backends (gymnasium, ale_py, Box2D) are imported only when an env is made.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import GamepadEnv, MissingDependencyError, UnknownEnvError
from .registry import EnvFamily, list_envs, make_env

if TYPE_CHECKING:
    from .ale import AtariEnv, ale_games
    from .car_racing import CarRacingEnv

_LAZY: dict[str, str] = {"AtariEnv": "ale", "ale_games": "ale", "CarRacingEnv": "car_racing"}

__all__ = [
    "AtariEnv",
    "CarRacingEnv",
    "EnvFamily",
    "GamepadEnv",
    "MissingDependencyError",
    "UnknownEnvError",
    "ale_games",
    "list_envs",
    "make_env",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
