"""Environment ids: ``<prefix>:<name>``, one syntax for every family.

=========  =========================================  ============================================
prefix     name                                       example
=========  =========================================  ============================================
``ale``    an Atari game, case-insensitive            ``ale:Breakout``, ``ale:space_invaders``
``gym``    a supported gymnasium env id (any case)    ``gym:CarRacing-v3``
``doom``   a ViZDoom scenario (needs ``vizdoom``)     ``doom:basic``
=========  =========================================  ============================================

:func:`make_env` builds one; keyword arguments go to the family's constructor (e.g.
``make_env("ale:Pong", seed=0, full_action_space=True)``). Backends are imported only when an
env is made, so importing :mod:`nitrogen.envs` needs neither gymnasium nor ale_py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import GamepadEnv, MissingDependencyError, UnknownEnvError


@dataclass(frozen=True)
class EnvFamily:
    """One id prefix: what it covers, a few example ids, and whether it can be used here."""

    prefix: str
    description: str
    examples: tuple[str, ...]
    available: bool
    install_hint: str | None = None


def _make_ale(name: str, **kwargs: Any) -> GamepadEnv:
    from .ale import AtariEnv

    return AtariEnv(name, **kwargs)


def _make_car_racing(**kwargs: Any) -> GamepadEnv:
    from .car_racing import CarRacingEnv

    return CarRacingEnv(**kwargs)


GYM_ENVS: dict[str, Callable[..., GamepadEnv]] = {"CarRacing-v3": _make_car_racing}
"""Gymnasium env ids with a pad mapping -> factory. Add an entry to support another one."""

_GYM_BY_KEY = {k.lower(): k for k in GYM_ENVS}


def _make_gym(name: str, **kwargs: Any) -> GamepadEnv:
    key = _GYM_BY_KEY.get(name.lower())
    if key is None:
        raise UnknownEnvError(
            f"unsupported gymnasium env {name!r}; supported: {', '.join(f'gym:{k}' for k in GYM_ENVS)}"
        )
    return GYM_ENVS[key](**kwargs)


def _vizdoom_installed() -> bool:
    return importlib.util.find_spec("vizdoom") is not None


def _make_doom(name: str, **kwargs: Any) -> GamepadEnv:
    if not _vizdoom_installed():
        raise MissingDependencyError(
            f"doom:{name} needs ViZDoom, which is not installed; install it with `pip install vizdoom`"
        )
    raise NotImplementedError(
        f"doom:{name}: ViZDoom is installed, but nitrogen.envs has no Doom pad mapping yet; "
        "available families: " + ", ".join(f.prefix for f in list_envs() if f.prefix != "doom")
    )


_FACTORIES: dict[str, Callable[..., GamepadEnv]] = {"ale": _make_ale, "gym": _make_gym, "doom": _make_doom}


def list_envs() -> tuple[EnvFamily, ...]:
    """The supported id prefixes, each with examples and whether it is usable in this install."""
    ale_ok = all(importlib.util.find_spec(m) is not None for m in ("gymnasium", "ale_py"))
    box2d_ok = all(importlib.util.find_spec(m) is not None for m in ("gymnasium", "Box2D", "pygame"))
    return (
        EnvFamily(
            "ale",
            "Atari 2600 games via ale_py; any name from nitrogen.envs.ale_games(), case-insensitive",
            ("ale:Breakout", "ale:Pong", "ale:SpaceInvaders", "ale:MontezumaRevenge"),
            ale_ok,
            None if ale_ok else "pip install 'gymnasium[atari]' ale-py",
        ),
        EnvFamily(
            "gym",
            "gymnasium envs with a pad mapping",
            tuple(f"gym:{k}" for k in GYM_ENVS),
            box2d_ok,
            None if box2d_ok else "pip install 'gymnasium[box2d]'",
        ),
        EnvFamily(
            "doom",
            "ViZDoom scenarios (not yet mapped)",
            ("doom:basic",),
            False,
            None if _vizdoom_installed() else "pip install vizdoom",
        ),
    )


def make_env(env_id: str, **kwargs: Any) -> GamepadEnv:
    """Build the environment named by ``env_id`` (``"ale:Breakout"``, ``"gym:CarRacing-v3"``)."""
    prefix, sep, name = env_id.partition(":")
    factory = _FACTORIES.get(prefix.strip().lower()) if sep else None
    if factory is None:
        examples = ", ".join(e for f in list_envs() for e in f.examples[:2])
        what = f"unknown prefix {prefix!r}" if sep else "missing '<prefix>:'"
        raise UnknownEnvError(
            f"bad env id {env_id!r}: {what}; ids look like <prefix>:<name> with prefix one of "
            f"{', '.join(sorted(_FACTORIES))} (e.g. {examples})"
        )
    if not name.strip():
        raise UnknownEnvError(f"bad env id {env_id!r}: no name after '{prefix}:'")
    return factory(name.strip(), **kwargs)
