"""Gymnasium's CarRacing-v3 (Box2D, continuous control) as a :class:`GamepadEnv`.

Controls (:data:`~nitrogen.envs.mappings.CAR_RACING_BINDINGS`): left stick x steers (negative =
left), the right trigger is gas, the left trigger brakes. One step is one physics frame at the
env's native 50 frames per second; an episode is truncated after 1000 steps (20 s) unless
``max_episode_steps`` says otherwise.

**Which frame.** The env's observation is a 96x96 top-down crop, too small for a model that
looks at 256x256 frames. By default (``frame="render"``) the frame is ``env.render()``, the same
view at 600x400 (shape ``(400, 600, 3)``). Measured on a shared x86 CPU (one core): a step costs about 11 ms,
rendering adds about 10 ms, so ~21 ms per step (about 47 steps/s, close to real time). Pass
``frame="obs"`` for the 96x96 observation, about twice as fast, e.g. for tests or training.
"""

from __future__ import annotations

from typing import Any, Literal

from ..gamepad import GamepadState
from .base import Frame, GamepadEnv, Info, StepResult
from .mappings import car_action_to_state, state_to_car_action

CAR_RACING_ID = "CarRacing-v3"
CAR_RACING_FPS = 50
FrameSource = Literal["render", "obs"]
_FRAME_SHAPES: dict[str, tuple[int, int, int]] = {"render": (400, 600, 3), "obs": (96, 96, 3)}


class CarRacingEnv(GamepadEnv):
    """CarRacing-v3 driven by a pad: steer with the left stick, gas/brake with the triggers."""

    name = "CarRacing"
    spec_id = f"gym:{CAR_RACING_ID}"
    fps = CAR_RACING_FPS

    def __init__(
        self,
        seed: int | None = None,
        *,
        frame: FrameSource = "render",
        max_episode_steps: int | None = None,
    ) -> None:
        import gymnasium

        if frame not in _FRAME_SHAPES:
            raise ValueError(f"frame must be one of {list(_FRAME_SHAPES)}, got {frame!r}")
        super().__init__(seed)
        self.frame_source: FrameSource = frame
        self.frame_shape = _FRAME_SHAPES[frame]
        extra = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        self._env: Any = gymnasium.make(CAR_RACING_ID, render_mode="rgb_array", continuous=True, **extra)

    @staticmethod
    def to_env_action(state: GamepadState) -> list[float]:
        """``[steer, gas, brake]`` for ``state``."""
        return [float(v) for v in state_to_car_action(state)]

    @staticmethod
    def canonical_state(action: list[float]) -> GamepadState:
        """The pad state that sends ``[steer, gas, brake]``."""
        return car_action_to_state(action)

    def _frame(self, obs: Frame) -> Frame:
        return self._env.render() if self.frame_source == "render" else obs

    def _reset(self, seed: int | None) -> tuple[Frame, Info]:
        obs, info = self._env.reset(seed=seed)
        return self._frame(obs), dict(info)

    def _step(self, state: GamepadState) -> StepResult:
        action = state_to_car_action(state)
        obs, reward, terminated, truncated, info = self._env.step(action)
        return self._frame(obs), float(reward), terminated, truncated, {**info, "env_action": action.tolist()}

    def _close(self) -> None:
        self._env.close()
