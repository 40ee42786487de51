"""Declarative keyboard-and-mouse mappings for games without gamepad support.

A :class:`KeyMap` says which key or mouse button each pad input presses. It is a YAML or JSON
file (or a preset name, see :data:`PRESETS`), validated by pydantic, so a user writes one for
their game without code::

    name: xsoldier
    stick_threshold: 0.5          # a stick direction is held past this deflection
    buttons:                      # pad button or trigger -> X keysym name, or mouse:left|middle|right
      SOUTH: space                # start the game
      RIGHT_SHOULDER: Shift_L     # shoot
      DPAD_LEFT: Left
      DPAD_RIGHT: Right
    left_stick: {up: Up, down: Down, left: Left, right: Right}
    mouse:                        # optional: one stick moves the mouse (relative motion)
      stick: right
      speed: 15                   # pixels per frame at full deflection
      curve: 2.0                  # response exponent: 1 linear, 2 fine aim near the centre
      deadzone: 0.1

Bindings are read from a :class:`~nitrogen.gamepad.GamepadState` (buttons and triggers through
:meth:`GamepadState.physical_buttons`, sticks as they are, +y down), so the mapping never sees the
model's action vectors. :meth:`KeyMap.bindings_for` and :meth:`KeyMap.mouse_motion` are pure; the
X11 side is :class:`nitrogen.desktop.keys.KeyboardMousePad`.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..actions import TRIGGERS
from ..gamepad import PAD_BUTTONS, GamepadState

__all__ = ["PRESETS", "KeyMap", "MouseMotion", "StickKeys", "load_keymap"]

PRESETS: tuple[str, ...] = ("arrows", "wasd-mouse")
"""Keymaps shipped in ``nitrogen/desktop/keymaps/<name>.yaml``."""

MOUSE_BUTTONS: dict[str, int] = {"mouse:left": 1, "mouse:middle": 2, "mouse:right": 3}
"""Mouse bindings -> X pointer button numbers."""

_MAPPABLE = frozenset(PAD_BUTTONS) | frozenset(TRIGGERS)
_MAX_FILE_BYTES = 64 * 1024
_KEYSYM = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def _short(text: object) -> str:
    """A user value for an error message, shortened and with its control characters made visible."""
    value = repr(str(text))
    return value if len(value) <= 40 else value[:37] + "..."


def check_binding(binding: str) -> str:
    """A key binding: ``mouse:left|middle|right`` or an X keysym name (``space``, ``Left``, ``a``, ``F1``)."""
    if binding in MOUSE_BUTTONS:
        return binding
    if not isinstance(binding, str) or not _KEYSYM.match(binding):
        raise ValueError(
            f"{_short(binding)} is not a key: use an X keysym name such as space, Left, a, F1, Shift_L, "
            f"or one of {', '.join(MOUSE_BUTTONS)}"
        )
    try:
        from Xlib import XK
    except ImportError:  # python-xlib is a Linux-only dependency; the X server checks it there
        return binding
    if XK.string_to_keysym(binding) == 0:
        raise ValueError(f"{_short(binding)} is not an X keysym name (see /usr/include/X11/keysymdef.h, without XK_)")
    return binding


class StickKeys(BaseModel):
    """The keys one stick's four directions hold (any may be left out)."""

    model_config = ConfigDict(extra="forbid")

    up: str | None = None
    down: str | None = None
    left: str | None = None
    right: str | None = None

    @field_validator("up", "down", "left", "right")
    @classmethod
    def _binding(cls, v: str | None) -> str | None:
        return None if v is None else check_binding(v)


class MouseMotion(BaseModel):
    """One stick as relative mouse motion: ``speed * sign(v) * ((|v| - deadzone) / (1 - deadzone)) ** curve``."""

    model_config = ConfigDict(extra="forbid")

    stick: Literal["left", "right"] = "right"
    speed: float = Field(15.0, gt=0, le=500, description="pixels per frame at full deflection")
    curve: float = Field(2.0, ge=1.0, le=5.0, description="response exponent (1: linear)")
    deadzone: float = Field(0.1, ge=0.0, lt=1.0)

    def axis(self, v: float) -> float:
        """Pixels this frame for one stick coordinate ``v`` in [-1, 1]."""
        mag = abs(v)
        if mag <= self.deadzone:
            return 0.0
        scaled = min((mag - self.deadzone) / (1.0 - self.deadzone), 1.0)
        return math.copysign(self.speed * scaled**self.curve, v)


class KeyMap(BaseModel):
    """Pad inputs -> keys and mouse; see the module docstring for the file format."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("custom", max_length=64)
    description: str = Field("", max_length=500)
    stick_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="a stick direction is held past this")
    buttons: dict[str, str] = Field(default_factory=dict, description="pad button or trigger -> key")
    left_stick: StickKeys | None = None
    right_stick: StickKeys | None = None
    mouse: MouseMotion | None = None

    @field_validator("buttons")
    @classmethod
    def _buttons(cls, v: dict[str, str]) -> dict[str, str]:
        for button, binding in v.items():
            if button not in _MAPPABLE:
                raise ValueError(f"{_short(button)} is not a pad button; use one of {', '.join(sorted(_MAPPABLE))}")
            check_binding(binding)
        return v

    @model_validator(mode="after")
    def _one_use_per_stick(self) -> KeyMap:
        if self.mouse is not None and getattr(self, f"{self.mouse.stick}_stick") is not None:
            raise ValueError(f"the {self.mouse.stick} stick moves the mouse, so it cannot also press keys")
        return self

    def bindings(self) -> frozenset[str]:
        """Every key and mouse button this map may press (what a release-all releases)."""
        out = set(self.buttons.values())
        for stick in (self.left_stick, self.right_stick):
            if stick is not None:
                out |= {k for k in (stick.up, stick.down, stick.left, stick.right) if k is not None}
        return frozenset(out)

    def bindings_for(self, state: GamepadState) -> frozenset[str]:
        """The keys and mouse buttons held in ``state``."""
        held = {self.buttons[b] for b in state.physical_buttons() if b in self.buttons}
        t = self.stick_threshold
        for stick, (x, y) in ((self.left_stick, state.left_stick), (self.right_stick, state.right_stick)):
            if stick is None:
                continue
            # The pad's +y points down (nitrogen.gamepad.STICK_Y_DOWN).
            for key, on in ((stick.left, x < -t), (stick.right, x > t), (stick.up, y < -t), (stick.down, y > t)):
                if on and key is not None:
                    held.add(key)
        return frozenset(held)

    def mouse_motion(self, state: GamepadState) -> tuple[float, float]:
        """Mouse motion of this frame, in pixels (+y down, like the stick and the screen)."""
        if self.mouse is None:
            return 0.0, 0.0
        x, y = state.left_stick if self.mouse.stick == "left" else state.right_stick
        return self.mouse.axis(x), self.mouse.axis(y)


def _loc(loc: tuple[object, ...]) -> str:
    where = ".".join(str(p) for p in loc) or "keymap"
    return where if len(where) <= 40 and where.isprintable() else _short(where)


def _parse(text: str, where: str) -> object:
    if where.endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def load_keymap(name_or_path: str | Path | KeyMap) -> KeyMap:
    """A keymap: a :data:`PRESETS` name, or a ``.yaml``/``.yml``/``.json`` file; raises ``ValueError`` on bad input."""
    if isinstance(name_or_path, KeyMap):
        return name_or_path
    text_name = str(name_or_path)
    if text_name in PRESETS:
        text = resources.files("nitrogen.desktop").joinpath("keymaps", f"{text_name}.yaml").read_text()
        where = f"preset {text_name}"
    else:
        path = Path(name_or_path)
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise ValueError(f"--keymap must be a preset ({', '.join(PRESETS)}) or a .yaml/.yml/.json file")
        if not path.is_file():
            raise ValueError(f"keymap file {path} does not exist; presets are {', '.join(PRESETS)}")
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ValueError(f"keymap file {path} is larger than {_MAX_FILE_BYTES} bytes")
        text, where = path.read_text(), str(path)
    import yaml

    try:
        doc = _parse(text, where.lower())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON (line {exc.lineno})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ValueError(f"{where} is not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must hold a mapping (name, buttons, left_stick, ...)")  # noqa: TRY004 (bad file)
    try:
        return KeyMap.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{_loc(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise ValueError(f"invalid keymap {where}: {problems}") from None
