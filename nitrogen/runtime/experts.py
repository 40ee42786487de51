"""Scripted experts that read the emulator: the reference players of recording and evaluation.

The scripted experts look at the Atari RAM (via :meth:`nitrogen.envs.ale.AtariEnv.ram`) or plan
on snapshots of the emulator (:class:`LookaheadExpert`: Freeway), never at the model, and
send one :class:`~nitrogen.gamepad.GamepadState` per frame, so their play can be recorded as
fine-tuning data (:mod:`nitrogen.runtime.dataset_writer`) or used as a baseline.

RAM addresses (checked against the rendered frame, ale-py 0.12, ``frameskip=1``):

* **Breakout**: ``RAM[72]`` paddle x (left pixel = ``RAM[72] - 47``, 16 px wide), ``RAM[99]``
  ball x (left pixel = ``RAM[99] - 49``, 2 px wide), ``RAM[101]`` ball y (top pixel =
  ``RAM[101] + 9``; ``0`` while no ball is in play). Centres line up when
  ``RAM[72] == RAM[99] - 9``.
* **Pong**: ``RAM[51]`` player (right, green) paddle y (top pixel ~ ``RAM[51] - 13.5``, 16 px
  tall), ``RAM[54]`` ball y (top pixel ~ ``RAM[54] - 13.5``, 4 px tall), ``RAM[49]`` ball x
  (left pixel = ``RAM[49] - 49``). Centres line up when ``RAM[51] ~ RAM[54] - 6``. Pong's
  minimal action set has no UP/DOWN: its ``RIGHT`` moves the paddle up and ``LEFT`` down, so the
  expert sends ``DPAD_RIGHT`` / ``DPAD_LEFT`` (what the env's canonical states for those actions are).
* **Gopher**: ``RAM[31]`` farmer x (centre of his shirt ~ ``RAM[31] - 3.7``), ``RAM[41]`` gopher x
  (its centre ~ ``RAM[41] + 3.8``; it wraps from one edge to the other). Centres line up when
  ``RAM[31] == RAM[41] + 7.5``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NitrogenError
from ..gamepad import NEUTRAL, GamepadState

FIRE = GamepadState(frozenset({"SOUTH"}))
LEFT = GamepadState(frozenset({"DPAD_LEFT"}))
RIGHT = GamepadState(frozenset({"DPAD_RIGHT"}))
FIRE_LEFT = GamepadState(frozenset({"DPAD_LEFT", "SOUTH"}))
FIRE_RIGHT = GamepadState(frozenset({"DPAD_RIGHT", "SOUTH"}))


class NoExpertError(NitrogenError, ValueError, LookupError):
    """There is no scripted expert for this game.

    A ``LookupError`` as well, so the evaluation harness skips the expert baseline on such a game
    (see :func:`nitrogen.runtime.benchmark.run_benchmark`) instead of failing the whole run.
    """


def _ram(env: Any) -> np.ndarray:
    """The 128-byte Atari RAM of ``env`` (an :class:`AtariEnv`, or anything with ``.ale``)."""
    if hasattr(env, "ram"):
        return np.asarray(env.ram())
    return np.asarray(env.unwrapped.ale.getRAM())


class BreakoutExpert:
    """Keeps the paddle under the ball (RAM[72] vs RAM[99]) while holding FIRE.

    FIRE only serves a ball in Breakout, and holding it serves each new ball at once (no
    press/release needed); while a ball is in play the game ignores it. Holding it on every frame
    makes serving a constant of the play rather than a rare one-frame event, which a policy
    cloned from this expert could never learn. Combined with a direction, the pad state maps to
    plain LEFT/RIGHT (Breakout has no LEFTFIRE; see :mod:`nitrogen.envs.mappings`).

    ``dead_band`` is how far (RAM units ~ pixels) the paddle may be off target before it moves.
    """

    name = "scripted-breakout"
    PADDLE_X, BALL_X, BALL_Y = 72, 99, 101
    POSITION_BYTES = (PADDLE_X, BALL_X)
    """RAM bytes it reads as pixel positions (``bench/expert_hold.py --sigma`` blurs them)."""
    OFFSET = -9
    """``RAM[72]`` that centres the paddle under a ball at ``RAM[99]`` is ``RAM[99] + OFFSET``."""

    def __init__(self, seed: int | None = None, *, dead_band: int = 2) -> None:
        self.seed = seed
        self.dead_band = dead_band

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        ram = _ram(env)
        if ram[self.BALL_Y] == 0:  # no ball in play: FIRE serves one
            return FIRE
        error = int(ram[self.BALL_X]) + self.OFFSET - int(ram[self.PADDLE_X])
        if error > self.dead_band:
            return FIRE_RIGHT
        if error < -self.dead_band:
            return FIRE_LEFT
        return FIRE


class PongExpert:
    """Keeps the player's paddle level with the ball (RAM[51] vs RAM[54]).

    Sends ``DPAD_RIGHT`` to move up and ``DPAD_LEFT`` to move down (Pong's RIGHT/LEFT actions).
    When the ball is not in play (``RAM[54] == 0``) it returns to the middle of the court.
    """

    name = "scripted-pong"
    PADDLE_Y, BALL_Y, BALL_X = 51, 54, 49
    POSITION_BYTES = (PADDLE_Y, BALL_Y)
    """RAM bytes it reads as pixel positions (``bench/expert_hold.py --sigma`` blurs them)."""
    OFFSET = -6
    """``RAM[51]`` that centres the paddle on a ball at ``RAM[54]`` is ``RAM[54] + OFFSET``."""
    CENTRE = 120
    UP, DOWN = RIGHT, LEFT

    def __init__(self, seed: int | None = None, *, dead_band: int = 4) -> None:
        self.seed = seed
        self.dead_band = dead_band

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        ram = _ram(env)
        ball_y = int(ram[self.BALL_Y])
        target = ball_y + self.OFFSET if ball_y else self.CENTRE
        error = target - int(ram[self.PADDLE_Y])  # > 0: the paddle must go down
        if error > self.dead_band:
            return self.DOWN
        if error < -self.dead_band:
            return self.UP
        return NEUTRAL


class LookaheadExpert:
    """Plans on a copy of the emulator: every ``replan_every`` frames, it tries each candidate action.

    For each action in :attr:`ACTIONS` it restores a snapshot of the emulator
    (:meth:`~nitrogen.envs.ale.AtariEnv.clone_state`), holds the action for ``replan_every``
    frames, then :attr:`CONTINUE` up to ``horizon`` frames, and scores the outcome:
    ``REWARD_SCALE * reward - LIFE_PENALTY * (life lost) + progress(RAM)``. It plays the best
    action (the earliest in :attr:`ACTIONS` on a tie) for ``replan_every`` frames, then plans
    again (receding-horizon control). The frames it tries are never part of the episode.
    Subclasses name the game's actions and, where reward is sparse, a :meth:`progress` read from RAM.
    """

    name = "lookahead"
    ACTIONS: tuple[str, ...] = ("NOOP",)
    """Candidate ALE action names, most preferred first."""
    CONTINUE = "NOOP"
    """What a rollout plays after its candidate, up to the horizon."""
    REWARD_SCALE = 1.0
    LIFE_PENALTY = 1000.0

    def __init__(self, seed: int | None = None, *, horizon: int = 32, replan_every: int = 4) -> None:
        if not 1 <= replan_every <= horizon:
            raise ValueError(f"need 1 <= replan_every <= horizon, got {replan_every}, {horizon}")
        self.seed = seed
        self.horizon, self.replan_every = horizon, replan_every
        self._state, self._left = NEUTRAL, 0

    def progress(self, ram: np.ndarray) -> float:
        """Game-specific value of the RAM at the end of a rollout (0: reward alone)."""
        return 0.0

    def reset(self, env: Any, seed: int | None = None) -> None:
        self._state, self._left = NEUTRAL, 0

    def _value(self, env: Any, action: str) -> float:
        reward, lost = env.emulate(action, self.replan_every)
        if not lost and self.horizon > self.replan_every:
            more, lost = env.emulate(self.CONTINUE, self.horizon - self.replan_every)
            reward += more
        return self.REWARD_SCALE * reward - self.LIFE_PENALTY * lost + self.progress(env.ram())

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        if self._left > 0:
            self._left -= 1
            return self._state
        root = env.clone_state()
        best_action, best_value = self.ACTIONS[0], -np.inf
        for action in self.ACTIONS:
            env.restore_state(root)
            value = self._value(env, action)
            if value > best_value:
                best_action, best_value = action, value
        env.restore_state(root)
        self._state, self._left = env.canonical_state(best_action), self.replan_every - 1
        return self._state


class FreewayExpert(LookaheadExpert):
    """Crosses the road, waiting (or stepping back) when going up now would run into a car.

    ``RAM[14]`` is the chicken's height (6 at the bottom kerb, about 177 at the top; up is +1 per
    frame). A car sends it back down and stuns it, so a rollout that is hit ends lower than one
    that waits. A crossing (+1 reward) counts as 200, more than any height.
    """

    name = "scripted-freeway"
    CHICKEN_Y = 14
    ACTIONS = ("UP", "NOOP", "DOWN")
    CONTINUE = "UP"
    REWARD_SCALE = 200.0

    def __init__(self, seed: int | None = None, *, horizon: int = 64, replan_every: int = 4) -> None:
        super().__init__(seed, horizon=horizon, replan_every=replan_every)

    def progress(self, ram: np.ndarray) -> float:
        return float(ram[self.CHICKEN_Y])


class BoxingExpert:
    """Boxes from the positions in RAM: stands beside the opponent, level with its head, and punches.

    ``RAM[32]``/``RAM[34]`` are the player's x/y, ``RAM[33]``/``RAM[35]`` the opponent's (1 unit per
    pixel of movement). The target spot is :attr:`STANDOFF` to the near side of the opponent and
    :attr:`Y_OFFSET` from its y. Each frame the expert punches when it is within :attr:`IN_LINE`
    of the target row and :attr:`REACH` of the opponent; otherwise it walks (diagonals included)
    towards the spot, and punches once there. Every choice follows from where the two boxers
    are on the current frame, which is what a policy cloned from its play can see. (A planner on
    emulator snapshots scores more, but its lead comes from moves timed on the future, which
    no single frame shows.) The constants were picked by trying a few dozen settings on Boxing;
    ``bench/expert_hold.py`` and docs/BENCHMARKS.md show how the rule holds up when cloned.
    """

    name = "scripted-boxing"
    PLAYER_X, OPPONENT_X, PLAYER_Y, OPPONENT_Y = 32, 33, 34, 35
    POSITION_BYTES = (PLAYER_X, OPPONENT_X, PLAYER_Y, OPPONENT_Y)
    """RAM bytes it reads as pixel positions (``bench/expert_hold.py --sigma`` blurs them)."""
    STANDOFF = 16
    Y_OFFSET = -8
    IN_LINE = 4
    REACH = 34

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        ram = _ram(env).astype(int)
        px, py = ram[self.PLAYER_X], ram[self.PLAYER_Y]
        ox, oy = ram[self.OPPONENT_X], ram[self.OPPONENT_Y]
        side = 1 if ox >= px else -1  # +1: the opponent is to the right
        dx = ox - side * self.STANDOFF - px  # > 0: the spot is to the right
        dy = oy + self.Y_OFFSET - py  # > 0: the spot is below
        if abs(dy) <= self.IN_LINE and abs(ox - px) <= self.REACH:
            return FIRE
        buttons: set[str] = set()
        if dy < -self.IN_LINE:
            buttons.add("DPAD_UP")
        elif dy > self.IN_LINE:
            buttons.add("DPAD_DOWN")
        if dx > 0:
            buttons.add("DPAD_RIGHT")
        elif dx < 0:
            buttons.add("DPAD_LEFT")
        return GamepadState(frozenset(buttons)) if buttons else FIRE


class GopherExpert:
    """Guards the carrots: keeps the farmer above the gopher and works the shovel every other frame.

    The gopher tunnels left and right under the field and digs up towards the carrots; the
    shovel fills a hole it passes over (20 points) and bonks the gopher when it surfaces (100).
    Each frame the expert walks towards the gopher's column (``RAM[41]``, against the farmer's
    ``RAM[31]``) unless it is within :attr:`DEAD_BAND` pixels, and presses the shovel (``SOUTH``)
    on even frames only: a held button digs once, so the shovel needs press and release. What
    it reads, two large sprites' columns, is on every frame; only the press/release phase is not.
    """

    name = "scripted-gopher"
    FARMER_X, GOPHER_X = 31, 41
    POSITION_BYTES = (FARMER_X, GOPHER_X)
    """RAM bytes it reads as pixel positions (``bench/expert_hold.py --sigma`` blurs them)."""
    ALIGN = 7.5
    """``RAM[41] - RAM[31] + ALIGN`` is the gopher's centre minus the farmer's, in pixels."""
    DEAD_BAND = 4

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._frame = 0

    def reset(self, env: Any, seed: int | None = None) -> None:
        self._frame = 0

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        ram = _ram(env).astype(int)
        dx = ram[self.GOPHER_X] - ram[self.FARMER_X] + self.ALIGN  # > 0: the gopher is to the right
        buttons: set[str] = {"SOUTH"} if self._frame % 2 == 0 else set()
        self._frame += 1
        if dx > self.DEAD_BAND:
            buttons.add("DPAD_RIGHT")
        elif dx < -self.DEAD_BAND:
            buttons.add("DPAD_LEFT")
        return GamepadState(frozenset(buttons)) if buttons else NEUTRAL


EXPERTS: dict[str, type] = {
    "ale:Breakout": BreakoutExpert,
    "ale:Pong": PongExpert,
    "ale:Freeway": FreewayExpert,
    "ale:Boxing": BoxingExpert,
    "ale:Gopher": GopherExpert,
}
"""Env id -> scripted expert class."""
