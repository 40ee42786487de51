"""Atari 2600 games (the Arcade Learning Environment) as :class:`GamepadEnv` s.

Each step is one emulator frame (``frameskip=1``, 60 per second) with sticky actions off
(``repeat_action_probability=0``), so an episode is a deterministic function of the seed and the
pad states. The frame is the RGB screen, ``(210, 160, 3)`` ``uint8``. Pad states map to ALE
actions through :mod:`nitrogen.envs.mappings`, onto the game's minimal action set by default or
onto all 18 actions with ``full_action_space=True``.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import numpy as np

from ..gamepad import GamepadState
from .base import Frame, GamepadEnv, Info, StepResult, UnknownEnvError
from .mappings import GAME_DIRECTION_REMAP, ale_action_to_state, state_to_ale_action

ALE_FPS = 60
ALE_FRAME_SHAPE = (210, 160, 3)
_ALE_VERSION = "v5"


def _normalise(name: str) -> str:
    """Game-name key: case, spaces, '-' and '_' do not matter (``space_invaders`` == ``SpaceInvaders``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


@functools.lru_cache(maxsize=1)
def _game_index() -> dict[str, str]:
    """Normalised name -> canonical name, from gymnasium's ``ALE/<Game>-v5`` registrations."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    prefix, suffix = "ALE/", f"-{_ALE_VERSION}"
    names = (key[len(prefix) : -len(suffix)] for key in gymnasium.envs.registry if key.startswith(prefix))
    return {_normalise(n): n for n in names if n and f"{prefix}{n}{suffix}" in gymnasium.envs.registry}


def ale_games() -> tuple[str, ...]:
    """Every Atari game name that ``ale:<game>`` accepts (ale_py ships the ROMs), sorted."""
    return tuple(sorted(_game_index().values()))


def resolve_ale_game(game: str) -> str:
    """The canonical name (``"SpaceInvaders"``) for a case-insensitive ``game``; else UnknownEnvError."""
    index = _game_index()
    found = index.get(_normalise(game))
    if found is not None:
        return found
    close = difflib.get_close_matches(_normalise(game), list(index), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(index[c] for c in close)}?" if close else ""
    examples = ", ".join(ale_games()[:8])
    raise UnknownEnvError(
        f"unknown Atari game {game!r}.{hint} Valid games include {examples} "
        f"({len(index)} in all; see nitrogen.envs.ale_games())"
    )


class AtariEnv(GamepadEnv):
    """One Atari 2600 game, one frame per step, controlled by pad states.

    ``game`` is case-insensitive (``"breakout"``, ``"SpaceInvaders"``). ``max_episode_frames``
    truncates an episode after that many steps (ALE's own limit of 108,000 frames still applies).
    """

    fps = ALE_FPS
    frame_shape = ALE_FRAME_SHAPE

    def __init__(
        self,
        game: str,
        *,
        full_action_space: bool = False,
        seed: int | None = None,
        max_episode_frames: int | None = None,
    ) -> None:
        import ale_py
        import gymnasium

        if max_episode_frames is not None and max_episode_frames < 1:
            raise ValueError(f"max_episode_frames must be a positive number of frames, got {max_episode_frames}")
        self.name = resolve_ale_game(game)
        self.spec_id = f"ale:{self.name}"
        self.full_action_space = full_action_space
        self.max_episode_frames = max_episode_frames
        super().__init__(seed)
        gymnasium.register_envs(ale_py)
        self._env: Any = gymnasium.make(
            f"ALE/{self.name}-{_ALE_VERSION}",
            frameskip=1,
            repeat_action_probability=0.0,
            full_action_space=full_action_space,
            render_mode="rgb_array",
        )
        # Most ROMs draw 210 rows; a few draw more (Pooyan 220, Carnival 214), so ask the emulator.
        self.frame_shape = tuple(self._env.observation_space.shape)
        self.action_names: tuple[str, ...] = tuple(self._env.unwrapped.get_action_meanings())
        """The game's ALE actions (names), in the order of its discrete action indices."""
        self._action_index = {name: i for i, name in enumerate(self.action_names)}
        self._remap = GAME_DIRECTION_REMAP.get(self.name)
        self._frames = 0

    def to_env_action(self, state: GamepadState) -> str:
        """The ALE action name that ``state`` sends in this game (after any fallback)."""
        return state_to_ale_action(state, self._action_index, self._remap)

    def canonical_state(self, action: str) -> GamepadState:
        """The canonical pad state for one of this game's action names."""
        if action not in self._action_index:
            raise ValueError(f"{self.spec_id} has no action {action!r}; its actions are {list(self.action_names)}")
        return ale_action_to_state(action, self._remap)

    def ram(self) -> np.ndarray:
        """The console's 128-byte RAM now, ``uint8`` ``(128,)`` (what scripted experts read)."""
        return self._env.unwrapped.ale.getRAM()

    def clone_state(self) -> Any:
        """A snapshot of the emulator (RAM, CPU, RNG) that :meth:`restore_state` returns to.

        With :meth:`emulate`, this lets a scripted expert try actions ahead of time (see
        :class:`nitrogen.runtime.experts.LookaheadExpert`); the episode itself never sees those frames.
        """
        return self._env.unwrapped.ale.cloneState()

    def restore_state(self, state: Any) -> None:
        """Put the emulator back to a snapshot from :meth:`clone_state`."""
        self._env.unwrapped.ale.restoreState(state)

    def emulate(self, action: str, frames: int) -> tuple[float, bool]:
        """Run the emulator ``frames`` frames on ``action`` (a name in :attr:`action_names`), unrendered.

        Returns the reward sum and whether a life was lost or the game ended on the way (it stops
        there). For planning from a :meth:`clone_state` snapshot; it does not count toward
        ``max_episode_frames``.
        """
        ale = self._env.unwrapped.ale
        code = self._env.unwrapped._action_set[self._action_index[action]]
        lives, total = ale.lives(), 0.0
        for _ in range(frames):
            total += ale.act(code)
            if ale.game_over() or ale.lives() < lives:
                return total, True
        return total, False

    def _reset(self, seed: int | None) -> tuple[Frame, Info]:
        self._frames = 0
        frame, info = self._env.reset(seed=seed)
        return frame, dict(info)

    def _step(self, state: GamepadState) -> StepResult:
        action = self.to_env_action(state)
        frame, reward, terminated, truncated, info = self._env.step(self._action_index[action])
        self._frames += 1
        if self.max_episode_frames is not None and self._frames >= self.max_episode_frames:
            truncated = True
        return frame, float(reward), terminated, truncated, {**info, "env_action": action}

    def _close(self) -> None:
        self._env.close()
