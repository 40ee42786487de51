"""A person as the policy: the game in a window, their gamepad or keyboard as the input.

:class:`HumanAgent` is an :class:`~nitrogen.runtime.agents.Agent`, so ``nitrogen record --policy human``
records a person's play in the fine-tuning schema exactly like a scripted expert's. It shows each
frame in a pygame window (SDL, so it runs on Linux and Windows) at the game's frame rate, and reads
the first game controller SDL knows (Xbox layout through SDL's controller database) plus the
keyboard. Closing the window or pressing Esc ends the recording (``KeyboardInterrupt``);
:func:`nitrogen.runtime.dataset_writer.record` then keeps every frame played so far.

The pure parts, :func:`keyboard_buttons` and :func:`controller_state`, turn readings into a
:class:`~nitrogen.gamepad.GamepadState`; they are what the tests exercise with exact inputs.

As a *labeller* (``nitrogen record --policy ckpt:... --label human``, see
:class:`nitrogen.runtime.dataset_writer.HumanLabeller`) the agent plays and the person watches;
:meth:`HumanAgent.read` also says whether the takeover key (``takeover_key``, a pygame key name,
taken out of the keymap) is held, and the person drives while it is or while they touch the pad.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import numpy as np

from ..envs.base import MissingDependencyError
from ..gamepad import GamepadState

DEFAULT_KEYMAP: dict[str, str] = {
    "up": "DPAD_UP",
    "down": "DPAD_DOWN",
    "left": "DPAD_LEFT",
    "right": "DPAD_RIGHT",
    "space": "SOUTH",
    "z": "SOUTH",
    "x": "EAST",
    "a": "WEST",
    "s": "NORTH",
    "q": "LEFT_SHOULDER",
    "w": "RIGHT_SHOULDER",
    "return": "START",
    "backspace": "BACK",
}
"""pygame key name -> pad button. Arrows are the D-pad; Space/Z is A (SOUTH), which is FIRE in Atari."""

CONTROLLER_BUTTONS: dict[str, str] = {
    "A": "SOUTH",
    "B": "EAST",
    "X": "WEST",
    "Y": "NORTH",
    "BACK": "BACK",
    "GUIDE": "GUIDE",
    "START": "START",
    "LEFTSTICK": "LEFT_THUMB",
    "RIGHTSTICK": "RIGHT_THUMB",
    "LEFTSHOULDER": "LEFT_SHOULDER",
    "RIGHTSHOULDER": "RIGHT_SHOULDER",
    "DPAD_UP": "DPAD_UP",
    "DPAD_DOWN": "DPAD_DOWN",
    "DPAD_LEFT": "DPAD_LEFT",
    "DPAD_RIGHT": "DPAD_RIGHT",
}
"""SDL game-controller button (``CONTROLLER_BUTTON_<name>``) -> pad button."""

AXIS_MAX = 32767
"""SDL controller axes are int16: sticks in [-32768, 32767] (+y down), triggers in [0, 32767]."""


def keyboard_buttons(pressed_keys: Collection[str], keymap: Mapping[str, str] = DEFAULT_KEYMAP) -> frozenset[str]:
    """The pad buttons held by the keys named in ``pressed_keys`` (pygame key names)."""
    return frozenset(keymap[k] for k in pressed_keys if k in keymap)


class ControllerReading(Protocol):
    """What :func:`controller_state` reads: pygame's ``_sdl2.controller.Controller`` has these."""

    def get_axis(self, axis: int) -> int: ...

    def get_button(self, button: int) -> bool: ...


def _axis(value: int, deadzone: float) -> float:
    x = max(-1.0, min(1.0, value / AXIS_MAX))
    return 0.0 if abs(x) < deadzone else x


def controller_state(pad: ControllerReading, constants: Any, deadzone: float = 0.15) -> GamepadState:
    """A controller's current sticks, triggers and buttons. ``constants`` is the ``pygame`` module
    (or anything with its ``CONTROLLER_*`` numbers). Sticks keep SDL's +y-down, which is the model's."""
    buttons = frozenset(
        ours
        for sdl, ours in CONTROLLER_BUTTONS.items()
        if pad.get_button(getattr(constants, f"CONTROLLER_BUTTON_{sdl}"))
    )

    def axis(name: str) -> float:
        return _axis(pad.get_axis(getattr(constants, f"CONTROLLER_AXIS_{name}")), deadzone)

    return GamepadState(
        buttons,
        left_stick=(axis("LEFTX"), axis("LEFTY")),
        right_stick=(axis("RIGHTX"), axis("RIGHTY")),
        left_trigger=max(0.0, axis("TRIGGERLEFT")),
        right_trigger=max(0.0, axis("TRIGGERRIGHT")),
    )


def merge(a: GamepadState, b: GamepadState) -> GamepadState:
    """Both inputs at once: buttons united, the larger stick deflection and trigger per axis."""

    def pick(x: float, y: float) -> float:
        return x if abs(x) >= abs(y) else y

    return GamepadState(
        a.buttons | b.buttons,
        left_stick=(pick(a.left_stick[0], b.left_stick[0]), pick(a.left_stick[1], b.left_stick[1])),
        right_stick=(pick(a.right_stick[0], b.right_stick[0]), pick(a.right_stick[1], b.right_stick[1])),
        left_trigger=max(a.left_trigger, b.left_trigger),
        right_trigger=max(a.right_trigger, b.right_trigger),
    )


def _pygame() -> Any:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as exc:
        raise MissingDependencyError(
            "the human policy needs pygame (pip install 'nitrogen[play]', which brings it with gymnasium[box2d])"
        ) from exc
    return pygame


class HumanAgent:
    """Shows the game in a window and returns what the person presses, one frame at a time.

    ``scale`` enlarges the window; ``fps`` paces the game (default: the env's, so it plays in real
    time); ``keymap`` maps pygame key names to pad buttons. Needs a display (or
    ``SDL_VIDEODRIVER=dummy``, which the tests use).
    """

    name = "human"

    def __init__(
        self,
        seed: int | None = None,
        *,
        scale: int = 3,
        fps: float | None = None,
        keymap: Mapping[str, str] | None = None,
        deadzone: float = 0.15,
        takeover_key: str | None = None,
    ) -> None:
        self.scale, self.fps, self.deadzone = scale, fps, deadzone
        self.keymap = dict(DEFAULT_KEYMAP if keymap is None else keymap)
        self.takeover_key = takeover_key
        if takeover_key is not None:
            self.keymap.pop(takeover_key, None)  # the takeover key is a switch, never a pad button
        self.held: set[str] = set()
        self._pg: Any = None
        self._screen: Any = None
        self._clock: Any = None
        self._pad: Any = None

    def _open(self, shape: tuple[int, ...], title: str) -> None:
        pg = self._pg = self._pg or _pygame()
        if not pg.display.get_init():
            pg.display.init()
        size = (shape[1] * self.scale, shape[0] * self.scale)
        if self._screen is None or self._screen.get_size() != size:
            self._screen = pg.display.set_mode(size)
        hint = f", hold {self.takeover_key} to take over" if self.takeover_key else ""
        pg.display.set_caption(f"nitrogen record: {title} (Esc ends{hint})")
        self._clock = self._clock or pg.time.Clock()
        self._pad = self._pad or self._first_controller(pg)

    @staticmethod
    def _first_controller(pg: Any) -> Any:
        try:
            from pygame._sdl2 import controller
        except ImportError:
            return None
        controller.init()
        for i in range(controller.get_count()):
            if controller.is_controller(i):
                return controller.Controller(i)
        return None

    @property
    def has_controller(self) -> bool:
        return self._pad is not None

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.held.clear()

    def _pump(self) -> None:
        pg = self._pg
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                raise KeyboardInterrupt("the player closed the window")
            if event.type == pg.KEYDOWN:
                self.held.add(pg.key.name(event.key))
            elif event.type == pg.KEYUP:
                self.held.discard(pg.key.name(event.key))

    def act(self, env: Any, frame: np.ndarray) -> GamepadState:
        return self.read(env, frame)[0]

    def read(self, env: Any, frame: np.ndarray) -> tuple[GamepadState, bool]:
        """Show ``frame``, then the person's pad state and whether the takeover key is held."""
        if self._screen is None:
            self._open(frame.shape, str(getattr(env, "spec_id", "game")))
        pg = self._pg
        surface = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self._screen.blit(pg.transform.scale(surface, self._screen.get_size()), (0, 0))
        pg.display.flip()
        self._pump()
        state = GamepadState(keyboard_buttons(self.held, self.keymap))
        if self._pad is not None:
            state = merge(state, controller_state(self._pad, pg, self.deadzone))
        self._clock.tick(self.fps or float(getattr(env, "fps", 60.0)))
        return state, self.takeover_key is not None and self.takeover_key in self.held

    def close(self) -> None:
        if self._pg is not None and self._screen is not None:
            self._pg.display.quit()
            self._screen = None
