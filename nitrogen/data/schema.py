"""The fine-tuning dataset schema and its mapping onto the model's 25-dim action layout.

A fine-tuning row has:

* ``image``: an HF ``datasets.Image`` value holding the encoded frame (a ``{"bytes": png, "path": ...}``
  dict; training reads the bytes only, see :mod:`nitrogen.data.images`);
* 17 boolean button columns: ``south east west north left_shoulder right_shoulder left_trigger
  right_trigger start back guide dpad_up dpad_down dpad_left dpad_right left_thumb right_thumb``;
* ``j_left`` / ``j_right``: ``[x, y]`` floats in ``[-1, 1]``. **Stick y points DOWN** (SDL
  convention, as everywhere in the model): ``y = -1`` is the stick pushed fully up;
* optionally ``episode_id`` and ``frame`` (the frame number inside its episode).

:class:`MappingConfig` says which column feeds each layout button, so datasets of consoles with
fewer buttons (NES, SNES, Genesis, Atari, see :data:`MAPPING_PRESETS`) or other column names load without
code changes. The four virtual buttons ``RIGHT_UP/RIGHT_BOTTOM/RIGHT_LEFT/RIGHT_RIGHT`` are not
columns: they are derived from ``j_right`` with ``virtual_threshold``.

A column the mapping names but the data lacks is treated as neutral (button ``False``, stick
``[0, 0]``) and reported once, by name (a ``logging`` warning, and
:attr:`ActionMapper.missing_columns`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nitrogen.actions import LEFT_STICK_SLICE, PHYSICAL_BUTTONS, RIGHT_STICK_SLICE, VIRTUAL_BUTTONS
from nitrogen.gamepad import VIRTUAL_THRESHOLD, pack_pad

logger = logging.getLogger(__name__)

BUTTON_COLUMNS: tuple[str, ...] = tuple(name.lower() for name in PHYSICAL_BUTTONS)
"""The schema's button column names: the 17 :data:`~nitrogen.actions.PHYSICAL_BUTTONS`, lower-cased
(the released NitroGen dataset's columns)."""


LABEL_COLUMNS: tuple[str, ...] = ("driver", "agrees", "intervention", "labeller")
"""The columns a recording with a labeller adds (``nitrogen record --label``)."""

EXTRA_COLUMNS: tuple[str, ...] = ("reward", "score", "video_id", "chunk_id", "time_s", *LABEL_COLUMNS)
"""Columns some gameplay sources carry and training does not read: dropped where sources of
different kinds (a recording, an import of the released dataset, a labelled round) are mixed."""


def pad_features(episode_id: str = "int64") -> dict[str, Any]:
    """The ``datasets`` features every gameplay shard starts with, in order: ``image``, the
    :data:`BUTTON_COLUMNS` (bool), ``j_left`` / ``j_right`` (``[x, y]`` float32), ``episode_id``
    (``episode_id``: its value type) and ``frame``. Writers add their own columns after these."""
    import datasets

    feats: dict[str, Any] = {"image": datasets.Image()}
    feats.update({col: datasets.Value("bool") for col in BUTTON_COLUMNS})
    feats["j_left"] = datasets.Sequence(datasets.Value("float32"), length=2)
    feats["j_right"] = datasets.Sequence(datasets.Value("float32"), length=2)
    feats["episode_id"] = datasets.Value(episode_id)
    feats["frame"] = datasets.Value("int64")
    return feats


STICK_TOLERANCE = 1e-3
"""Stick values may exceed [-1, 1] by this much (float noise) and are then clipped; more is corrupt."""


class CorruptRowError(ValueError):
    """A dataset row that cannot be turned into a training sample.

    ``row_index`` is the row of the underlying dataset, ``column`` the offending column.
    """

    def __init__(self, row_index: int, column: str, reason: str) -> None:
        self.row_index = int(row_index)
        self.column = column
        self.reason = reason
        super().__init__(f"corrupt row {self.row_index}, column {column!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader workers
        return (type(self), (self.row_index, self.column, self.reason))


def _default_buttons() -> dict[str, str | None]:
    return {name: name.lower() for name in PHYSICAL_BUTTONS}


class MappingConfig(BaseModel):
    """How dataset columns map onto the 25-dim action layout.

    ``buttons`` maps each of the 17 physical layout buttons (upper-case layout names) to a column
    name, or to ``None`` for a button the console does not have (always released). Buttons left out
    of the dict are ``None``. Several buttons may read the same column.

    ``virtual_threshold``: after the deadzone, ``RIGHT_UP = y < -t``, ``RIGHT_BOTTOM = y > t``,
    ``RIGHT_LEFT = x < -t``, ``RIGHT_RIGHT = x > t`` on ``j_right`` (stick +y points down, so
    "up" is negative y). ``deadzone``: per axis, on both sticks, ``|v| < deadzone`` becomes exactly
    0 before packing (and before deriving the virtual buttons).
    """

    model_config = ConfigDict(extra="forbid")

    buttons: dict[str, str | None] = Field(default_factory=_default_buttons)
    j_left: str | None = "j_left"
    j_right: str | None = "j_right"
    image: str = "image"
    episode_id: str = "episode_id"
    frame: str = "frame"
    virtual_threshold: float = Field(VIRTUAL_THRESHOLD, gt=0.0, lt=1.0)
    deadzone: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("buttons")
    @classmethod
    def _known_buttons(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        full: dict[str, str | None] = {name: None for name in PHYSICAL_BUTTONS}
        for key, column in value.items():
            name = key.upper()
            if name in VIRTUAL_BUTTONS:
                raise ValueError(f"{name} is virtual: it is derived from j_right, not read from a column")
            if name not in full:
                raise ValueError(f"unknown button {key!r}; expected one of {', '.join(PHYSICAL_BUTTONS)}")
            full[name] = column
        return full

    def columns(self) -> list[str]:
        """Every action column this mapping reads, without duplicates, in a stable order."""
        names = [c for c in self.buttons.values() if c] + [c for c in (self.j_left, self.j_right) if c]
        return list(dict.fromkeys(names))


_DPAD = {"DPAD_UP": "up", "DPAD_DOWN": "down", "DPAD_LEFT": "left", "DPAD_RIGHT": "right"}

MAPPING_PRESETS: dict[str, MappingConfig] = {
    "xbox": MappingConfig(),
    "nes": MappingConfig(
        buttons={"SOUTH": "a", "EAST": "b", "BACK": "select", "START": "start", **_DPAD},
        j_left=None,
        j_right=None,
    ),
    "snes": MappingConfig(
        buttons={
            "SOUTH": "b",
            "EAST": "a",
            "WEST": "y",
            "NORTH": "x",
            "LEFT_SHOULDER": "l",
            "RIGHT_SHOULDER": "r",
            "BACK": "select",
            "START": "start",
            **_DPAD,
        },
        j_left=None,
        j_right=None,
    ),
    "genesis": MappingConfig(
        buttons={"WEST": "a", "SOUTH": "b", "EAST": "c", "START": "start", **_DPAD},
        j_left=None,
        j_right=None,
    ),
    "atari": MappingConfig(buttons={"SOUTH": "fire", **_DPAD}, j_left=None, j_right=None),
}
"""Mappings for consoles with fewer buttons. Positional convention: the console's bottom face
button goes to SOUTH (NES A / SNES B / Genesis B / Atari fire), as an emulator's default pad map.
The NES maps A->SOUTH, B->EAST (as the brief's mapping), SNES follows the physical positions."""


def load_mapping(path: str | Path) -> MappingConfig:
    """Read a :class:`MappingConfig` from a JSON file, or YAML (``.yaml``/``.yml``) if PyYAML exists.

    The file may also be ``{"preset": "nes", ...overrides}`` to start from a preset.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {path} needs PyYAML; install it or use a .json mapping") from exc
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a mapping file must hold an object, got {type(data).__name__}")
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in MAPPING_PRESETS:
            raise ValueError(f"{path}: unknown preset {preset!r}; expected one of {sorted(MAPPING_PRESETS)}")
        base = MAPPING_PRESETS[preset].model_dump()
        base.update(data)
        data = base
    return MappingConfig.model_validate(data)


def _stick(value: Any) -> tuple[float, float]:
    """One stick cell -> ``(x, y)``; raises ``ValueError`` saying why it is unusable."""
    if value is None:
        raise ValueError("null stick value")
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"stick must be an [x, y] pair, got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"stick must have 2 values [x, y], got {len(value)}")
    try:
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"stick values must be numbers, got {list(value)!r}") from exc
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"stick values must be finite, got [{x}, {y}]")
    if max(abs(x), abs(y)) > 1.0 + STICK_TOLERANCE:
        raise ValueError(f"stick values must lie in [-1, 1], got [{x}, {y}]")
    return x, y


def _button(value: Any) -> bool:
    if value is None:
        raise ValueError("null button value")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"button must be a boolean, got {value!r}")


class ActionMapper:
    """Applies a :class:`MappingConfig` to rows or columns of a dataset.

    Columns the mapping reads but the data lacks are neutral, logged once by name and listed in
    :attr:`missing_columns` (call :meth:`check_columns` with the dataset's column names up front;
    otherwise they are discovered as rows are mapped).
    """

    def __init__(self, config: MappingConfig | None = None) -> None:
        self.config = config or MappingConfig()
        self.missing_columns: list[str] = []

    def check_columns(self, available: Sequence[str]) -> list[str]:
        """Note which mapped columns are absent from ``available``; returns them."""
        have = set(available)
        missing = [c for c in self.config.columns() if c not in have]
        self._note_missing(missing)
        return missing

    def _note_missing(self, names: Sequence[str]) -> None:
        new = [n for n in names if n not in self.missing_columns]
        if new:
            self.missing_columns.extend(new)
            logger.warning("columns missing from the dataset, treated as neutral: %s", ", ".join(new))

    def row_to_action(self, row: Mapping[str, Any], row_index: int = -1) -> np.ndarray:
        """One row (a dict of column -> value) -> ``(25,)`` float32 packed action."""
        columns = {name: [row[name]] for name in self.config.columns() if name in row}
        self._note_missing([n for n in self.config.columns() if n not in row])
        return self.table_to_actions(columns, row_offset=row_index, num_rows=1)[0]

    def table_to_actions(
        self,
        columns: Mapping[str, Sequence[Any]],
        *,
        row_offset: int = 0,
        num_rows: int | None = None,
        errors: list[CorruptRowError] | None = None,
    ) -> np.ndarray:
        """Columns (name -> N values) -> ``(N, 25)`` float32 packed actions.

        Row ``k`` is reported as dataset row ``row_offset + k`` in errors. A bad cell raises
        :class:`CorruptRowError`, unless ``errors`` is a list: then the error is appended, that row
        is left all-neutral, and the caller must not use it.
        """
        cfg = self.config
        present = [c for c in cfg.columns() if c in columns]
        self._note_missing([c for c in cfg.columns() if c not in columns])
        if num_rows is None:
            if not present:
                raise ValueError("cannot infer the number of rows: no mapped column is present; pass num_rows")
            num_rows = len(columns[present[0]])
        pressed = np.zeros((num_rows, len(PHYSICAL_BUTTONS)), dtype=bool)
        bad = np.zeros(num_rows, dtype=bool)

        def fail(k: int, column: str, reason: str) -> None:
            err = CorruptRowError(row_offset + k, column, reason)
            if errors is None:
                raise err
            if not bad[k]:
                errors.append(err)
            bad[k] = True

        for b, (name, column) in enumerate(cfg.buttons.items()):
            if column is None or column not in columns:
                continue
            values = columns[column]
            arr = np.asarray(values)
            if arr.dtype == np.bool_ and arr.shape == (num_rows,):
                pressed[:, b] = arr
                continue
            for k, v in enumerate(values):  # slow path: validate every cell
                try:
                    pressed[k, b] = _button(v)
                except ValueError as exc:
                    fail(k, column, str(exc))

        sticks = []
        for column in (cfg.j_left, cfg.j_right):
            xy = np.zeros((num_rows, 2), dtype=np.float32)
            if column is not None and column in columns:
                xy = self._stick_array(columns[column], num_rows, lambda k, r, c=column: fail(k, c, r))
            if cfg.deadzone > 0:
                xy[np.abs(xy) < cfg.deadzone] = 0.0
            sticks.append(xy)
        out = pack_pad(pressed, sticks[0], sticks[1], cfg.virtual_threshold)
        if bad.any():
            out[bad] = 0.0
            out[bad, LEFT_STICK_SLICE.start : RIGHT_STICK_SLICE.stop] = 0.5
        return out

    @staticmethod
    def _stick_array(values: Sequence[Any], num_rows: int, fail: Any) -> np.ndarray:
        try:  # fast path: a clean (N, 2) numeric column
            arr = np.asarray(values, dtype=np.float64)
            if (
                arr.shape == (num_rows, 2)
                and np.isfinite(arr).all()
                and np.abs(arr).max(initial=0) <= 1 + STICK_TOLERANCE
            ):
                return np.clip(arr, -1.0, 1.0).astype(np.float32)
        except (TypeError, ValueError):
            pass
        xy = np.zeros((num_rows, 2), dtype=np.float32)
        for k, v in enumerate(values):
            try:
                xy[k] = np.clip(_stick(v), -1.0, 1.0)
            except (TypeError, ValueError) as exc:
                fail(k, str(exc))
                xy[k] = 0.0
        return xy


def row_to_action(row: Mapping[str, Any], mapping: MappingConfig | None = None) -> np.ndarray:
    """One row -> ``(25,)`` float32 action with ``mapping`` (default: the standard schema)."""
    return ActionMapper(mapping).row_to_action(row)


def table_to_actions(columns: Mapping[str, Sequence[Any]], mapping: MappingConfig | None = None) -> np.ndarray:
    """Columns (name -> N values) -> ``(N, 25)`` float32 actions with ``mapping``."""
    return ActionMapper(mapping).table_to_actions(columns)
