"""A torch ``Dataset`` of NitroGen training windows over an HF gameplay dataset.

Window ``i`` is anchored at a frame ``t`` of one episode:

* ``pixels (F, 3, S, S)``: frames ``t - (F-1)*spacing, ..., t - spacing, t`` (oldest first, as the
  model expects), where ``F = context_length``. A slot before the episode's first frame is marked
  ``False`` in ``frame_valid`` and holds a black frame (-1); it is never filled from another episode.
* ``actions (H, 25)``: the packed actions of frames ``[t + action_shift, t + action_shift + H)``.

No window crosses an episode boundary: rows are grouped by ``episode_id`` (in order of first
appearance; by ``(game, episode_id)`` when a ``game`` column exists, so recordings of several games
can share episode numbers) and ordered by ``frame`` when that column exists, else by row order;
without an ``episode_id`` column each game (or, without a ``game`` column, the whole dataset) is one
episode. Anchors whose action range would run past the episode's last frame are dropped. Frame
numbers are only used for ordering: gaps are not detected. An optional ``segment`` column cuts an
episode further: no window (context frames or actions) spans two segments, so rows removed from
the middle of an episode (``nitrogen data import-nitrogen --drop-idle``) leave a boundary windows
respect; the split by episode still keeps an episode's segments together. :meth:`GameplayDataset.window_game`
names each window's game, which the training eval uses to report metrics per game.

Game ids: given the checkpoint's ``game_mapping`` (name -> id), each item also carries ``game_ids``,
the id of its window's game, so fine-tuning trains the game embedding. A game the mapping lacks
gets the unconditional id 0 (the mapping's ``""``), and a dataset without a ``game`` column gets 0
everywhere; either is logged once, as a warning naming what was missing.

Frames are decoded from the image cells' bytes by :class:`~nitrogen.data.images.ImageReader`
(the image column is read with ``datasets``' own decoding off, so the library never opens a path):
a cell with only a path is a corrupt row unless ``image_root`` names the folder its relative path
must resolve inside, and an image over the pixel budget (``max_image_pixels``, checked on its
header) is a corrupt row before a pixel is decoded. The optional ``mask_rect`` is then painted
black in source pixels, and the frame is squashed to ``S x S`` (the vision tower's input side, see
:meth:`WindowConfig.from_checkpoint`) with ``INTER_AREA`` exactly as at play time
(:func:`nitrogen.inference.preprocessing.resize_frame`), then normalised by
:func:`nitrogen.inference.preprocessing.to_pixels`.

Corrupt rows: an image cell the reader refuses (undecodable, over the pixel budget, path-only), or
a bad action cell (wrong-length / non-numeric / out-of-range stick, non-boolean button), raises
:class:`CorruptRowError` naming the dataset row, in one line. Action cells are all checked when the
dataset is built; images when a window using them is read (all of them up front with
``cache_dir``). With ``skip_bad=True`` the error is logged as a warning (once per row), recorded
in ``bad_rows`` (row -> error), and item ``i`` is replaced by the first window ``i+1, i+2, ...`` (wrapping around)
that is fully valid: all its valid context frames decode and all its action rows are clean. The
item's ``index`` then names the substitute's anchor row, so a substitution is visible, never a
silent zero. ``bad_rows`` is per process: with DataLoader workers each worker keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nitrogen.actions import DEFAULT_BUTTON_ORDER
from nitrogen.atomic import atomic_path, atomic_write_json
from nitrogen.data.images import MAX_IMAGE_PIXELS, ImageReader
from nitrogen.data.schema import ActionMapper, CorruptRowError, MappingConfig
from nitrogen.gamepad import check_button_order, reorder_buttons
from nitrogen.inference.preprocessing import resize_frame, to_pixels
from nitrogen.model.checkpoint import RawCheckpoint, vision_spec_for
from nitrogen.model.configuration import ModalityConfig, ModelConfig
from nitrogen.model.vision import lookup_spec

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Version 2: frames decoded from bytes only, within the pixel budget (version 1 caches may hold
frames read from a cell's path, and are rebuilt)."""
GAME_COLUMN = "game"
"""Optional column naming each row's game (``nitrogen record`` writes it)."""
SEGMENT_COLUMN = "segment"
"""Optional column: rows of one episode with different segments are never in one window."""
UNCONDITIONAL_GAME = ""
"""The game-mapping name of id 0, the unconditional game."""


@cache
def released_image_size() -> int:
    """The input side of the released model's vision tower (its registered encoder's)."""
    return lookup_spec(ModelConfig.model_fields["vision_encoder_name"].default).image_size


class WindowConfig(BaseModel):
    """How windows are cut and frames prepared. Defaults follow the released model; a run on a
    checkpoint takes all of them from it with :meth:`from_checkpoint`."""

    model_config = ConfigDict(extra="forbid")

    context_length: int = Field(1, gt=0, description="frames per sample (F)")
    frame_spacing: int = Field(18, gt=0, description="rows between consecutive context frames")
    action_shift: int = Field(3, ge=0, description="first action is at anchor + action_shift")
    action_horizon: int = Field(18, gt=0, description="actions per sample (H)")
    image_size: int = Field(
        default_factory=released_image_size, gt=0, description="side S of the square frame the vision tower takes"
    )
    mask_rect: tuple[int, int, int, int] | None = Field(None, description="(x, y, w, h) painted black")

    @field_validator("mask_rect")
    @classmethod
    def _positive_rect(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None and (value[2] <= 0 or value[3] <= 0 or value[0] < 0 or value[1] < 0):
            raise ValueError(f"mask_rect must be (x, y, w, h) with x, y >= 0 and w, h > 0, got {value}")
        return value

    @classmethod
    def from_modality(cls, modality: ModalityConfig, action_horizon: int = 18, **overrides: Any) -> WindowConfig:
        """The windowing of a checkpoint's ``modality_cfg`` (plus the model's ``action_horizon``).

        The frame size is not in ``modality_cfg``: pass ``image_size=`` or use :meth:`from_checkpoint`.
        """
        fields = {
            "context_length": modality.frame_per_sample,
            "frame_spacing": modality.frame_spacing,
            "action_shift": modality.action_shift,
            "action_horizon": action_horizon,
        }
        return cls(**(fields | overrides))

    @classmethod
    def from_checkpoint(cls, raw: RawCheckpoint, **overrides: Any) -> WindowConfig:
        """Everything from the checkpoint: its windowing, its action horizon, and the frame size of
        its vision tower (read from the tower's weights, :func:`nitrogen.model.checkpoint.vision_spec_for`)."""
        fields: dict[str, Any] = {"image_size": vision_spec_for(raw).image_size} | overrides
        return cls.from_modality(raw.config.modality_cfg, raw.config.model_cfg.action_horizon, **fields)


def _pick_split(data: Any, split: str | None) -> Any:
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if split is None:
            if "train" in data:
                split = "train"
            elif len(data) == 1:
                split = next(iter(data))
            else:
                raise ValueError(f"several splits {sorted(data)}; pass split=")
        return data[split]
    if split is not None and isinstance(data, datasets.Dataset) and data.split is not None and str(data.split) != split:
        raise ValueError(f"asked for split {split!r} but the dataset on disk is {data.split!r}")
    return data


def load_gameplay(source: Any, split: str | None = None, *, cache_dir: str | None = None) -> Any:
    """Load a gameplay ``datasets.Dataset`` from a hub id, a folder, parquet file(s) or ``save_to_disk``.

    * a ``datasets.Dataset`` / ``DatasetDict`` is returned as is (one split chosen);
    * a folder with ``dataset_info.json``/``state.json``/``dataset_dict.json``: ``load_from_disk``;
    * a ``.parquet`` file, a list of them, or a folder holding ``*.parquet`` (searched recursively):
      ``load_dataset("parquet", data_files=...)``;
    * anything else: ``load_dataset(source)`` (a hub id or a loadable folder).

    ``split`` defaults to ``"train"`` (or the only split). ``cache_dir`` is the HF datasets cache.
    """
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _pick_split(source, split)
    if isinstance(source, (list, tuple)):
        files = [str(p) for p in source]
        return datasets.load_dataset("parquet", data_files=files, split=split or "train", cache_dir=cache_dir)
    path = Path(source)
    if path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return _pick_split(datasets.load_from_disk(str(path)), split)
    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split=split or "train", cache_dir=cache_dir)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if files:
            return datasets.load_dataset("parquet", data_files=files, split=split or "train", cache_dir=cache_dir)
    return _pick_split(datasets.load_dataset(str(source), cache_dir=cache_dir), split)


def load_gameplays(sources: Sequence[Any], split: str | None = None, *, cache_dir: str | None = None) -> Any:
    """Several :func:`load_gameplay` sources as one dataset (their columns must agree)."""
    import datasets

    if not sources:
        raise ValueError("no dataset given")
    parts = [load_gameplay(s, split, cache_dir=cache_dir) for s in sources]
    if len(parts) == 1:
        return parts[0]
    first = set(parts[0].column_names)
    for source, part in zip(sources[1:], parts[1:], strict=True):
        if set(part.column_names) != first:
            raise ValueError(
                f"{source}: columns {sorted(part.column_names)} differ from {sources[0]}'s {sorted(first)}"
            )
    return datasets.concatenate_datasets(parts)


class GameplayDataset(torch.utils.data.Dataset):
    """Training windows (see the module docstring) over an HF ``datasets.Dataset``.

    Items are dicts: ``pixels`` float32 ``(F, 3, S, S)`` in [-1, 1], ``frame_valid`` bool ``(F,)``,
    ``actions`` float32 ``(H, 25)``, ``action_mask`` float32 ``(H, 25)`` of ones, ``index`` int (the
    dataset row of the anchor frame), and with ``game_mapping`` ``game_ids`` int64 ``()`` (see the
    module docstring). The default torch collate stacks them into the arguments of
    :meth:`NitroGenModel.training_loss`.

    ``cache_dir``: decode every frame once into ``frames-<key>.npy`` (uint8 ``(N, S, S, 3)``,
    memory-mapped), keyed by the dataset fingerprint, ``mask_rect``, ``image_size`` and the image
    reader (``image_root``, ``max_image_pixels``); a later dataset with the same key reads it
    instead of decoding. The cache decodes through :meth:`decode_image`, as reads without it do.

    ``image_root``: the folder that image cells holding only a relative path are read from (never
    outside it); without it such cells are corrupt rows. ``button_order``: the checkpoint's order of
    button dims (:data:`nitrogen.actions.BUTTON_ORDERS`); item ``actions`` are permuted into it by
    :func:`nitrogen.gamepad.reorder_buttons` (:attr:`row_actions` stay in the layout's order). ``max_image_pixels``: the largest
    ``width * height`` decoded (see :mod:`nitrogen.data.images`).

    ``row_weights``: one non-negative training weight per dataset row (e.g. per source dataset, or
    for DAgger's intervention rows). Each action row of a window then carries its row's weight in
    ``action_mask``, which the flow-matching loss already uses as a per-entry weight
    (``sum(err * mask) / sum(mask)``); without it the mask is all ones, as before.
    """

    def __init__(
        self,
        data: Any,
        config: WindowConfig | None = None,
        *,
        mapping: MappingConfig | None = None,
        skip_bad: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        game_mapping: Mapping[str, int] | None = None,
        image_root: str | os.PathLike[str] | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        button_order: str = DEFAULT_BUTTON_ORDER,
        row_weights: Sequence[float] | np.ndarray | None = None,
        **window: Any,
    ) -> None:
        if config is not None and window:
            raise TypeError("pass either config= or window keyword arguments, not both")
        self.row_weights = None if row_weights is None else np.asarray(row_weights, dtype=np.float32)
        if self.row_weights is not None and (
            self.row_weights.shape != (len(data),)
            or not np.isfinite(self.row_weights).all()
            or (self.row_weights < 0).any()
        ):
            raise ValueError(f"row_weights must be {len(data)} finite non-negative numbers, one per row")
        self.config = config or WindowConfig(**window)
        self.button_order = check_button_order(button_order)
        self.images = ImageReader(image_root=image_root, max_pixels=max_image_pixels)
        self.mapper = ActionMapper(mapping)
        self.skip_bad = skip_bad
        self.bad_rows: dict[int, CorruptRowError] = {}
        mcfg = self.mapper.config
        if mcfg.image not in data.column_names:
            raise ValueError(f"dataset has no image column {mcfg.image!r}; columns: {data.column_names}")
        self.num_rows = len(data)
        self._fingerprint = getattr(data, "_fingerprint", None)

        import datasets

        images = data.select_columns([mcfg.image])
        if isinstance(images.features[mcfg.image], datasets.Image):
            images = images.cast_column(mcfg.image, datasets.Image(decode=False))
        self._images = images

        self.mapper.check_columns(data.column_names)
        meta_cols = [c for c in self.mapper.config.columns() if c in data.column_names]
        meta_cols += [
            c
            for c in (mcfg.episode_id, mcfg.frame, GAME_COLUMN, SEGMENT_COLUMN)
            if c in data.column_names and c not in meta_cols
        ]
        columns = data.select_columns(meta_cols)[:] if meta_cols else {}
        errors: list[CorruptRowError] | None = [] if skip_bad else None
        self.row_actions = self.mapper.table_to_actions(columns, num_rows=self.num_rows, errors=errors)
        self._bad_action = np.zeros(self.num_rows, dtype=bool)
        for err in errors or []:
            self._record_bad(err)
            self._bad_action[err.row_index] = True

        episode_ids = columns.get(mcfg.episode_id)
        self._has_game_column = GAME_COLUMN in columns
        if self._has_game_column:
            # Key episodes by (game, episode id); without an episode id column, one episode per game.
            games = columns[GAME_COLUMN]
            episode_ids = list(zip(games, episode_ids if episode_ids is not None else [0] * len(games), strict=True))
        self._build_windows(episode_ids, columns.get(mcfg.frame), columns.get(SEGMENT_COLUMN))
        self.game_mapping = dict(game_mapping) if game_mapping is not None else None
        self._episode_game_id = self._game_ids_per_episode()
        self._bad_image = np.zeros(self.num_rows, dtype=bool)
        self._cache_path: Path | None = None
        self._cache: np.ndarray | None = None
        self.cache_reused = False
        if cache_dir is not None:
            self._cache_path = self._prepare_cache(Path(cache_dir))

    # ----------------------------------------------------------------------------- windows
    def _build_windows(
        self, episode_ids: Sequence[Any] | None, frames: Sequence[Any] | None, segments: Sequence[Any] | None = None
    ) -> None:
        n = self.num_rows
        if episode_ids is None:
            episode_ids = [None] * n
        # Windows are cut inside groups (episode, segment); episodes are what the split keeps whole.
        keys = zip(episode_ids, segments, strict=True) if segments is not None else ((ep, None) for ep in episode_ids)
        groups: dict[Any, list[int]] = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        episodes = {ep: None for ep, _ in groups}  # in order of first appearance
        episode_index = {ep: e for e, ep in enumerate(episodes)}
        frame_no = np.asarray(frames) if frames is not None else None
        order, starts, ends = [], [], []
        total = 0
        for rows in groups.values():
            rows_arr = np.asarray(rows, dtype=np.int64)
            if frame_no is not None:
                rows_arr = rows_arr[np.argsort(frame_no[rows_arr], kind="stable")]
            order.append(rows_arr)
            starts.append(total)
            total += len(rows_arr)
            ends.append(total)
        self.order = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        self.episode_keys = list(episodes)
        cfg = self.config
        span = cfg.action_shift + cfg.action_horizon
        pos, ep_start, ep_index = [], [], []
        for (ep, _), s, t in zip(groups, starts, ends, strict=True):
            anchors = np.arange(s, t - span + 1, dtype=np.int64)  # anchor + span <= segment end
            pos.append(anchors)
            ep_start.append(np.full(len(anchors), s, dtype=np.int64))  # no context frame before the segment
            ep_index.append(np.full(len(anchors), episode_index[ep], dtype=np.int64))
        self._win_pos = np.concatenate(pos) if pos else np.zeros(0, dtype=np.int64)
        self._win_start = np.concatenate(ep_start) if ep_start else np.zeros(0, dtype=np.int64)
        self.window_episode = np.concatenate(ep_index) if ep_index else np.zeros(0, dtype=np.int64)

    def _game_ids_per_episode(self) -> np.ndarray | None:
        """Each episode's game id under :attr:`game_mapping` (None without a mapping); warns once
        about a missing ``game`` column or about game names the mapping lacks."""
        mapping = self.game_mapping
        if mapping is None:
            return None
        if not self._has_game_column:
            logger.warning(
                "the dataset has no %r column: every window gets the unconditional game id 0, "
                "so the game embedding is not trained",
                GAME_COLUMN,
            )
            return np.zeros(len(self.episode_keys), dtype=np.int64)
        names = [str(game) for game, _ in self.episode_keys]  # keys are (game, episode id)
        unknown = sorted(set(names) - set(mapping))
        if unknown:
            if UNCONDITIONAL_GAME not in mapping:
                raise ValueError(
                    f"games {unknown} are not in the checkpoint's game mapping {sorted(mapping)}, which has no "
                    f"unconditional entry {UNCONDITIONAL_GAME!r} to give them"
                )
            logger.warning(
                "games %s are not in the checkpoint's game mapping (%s): their windows get the unconditional game id 0",
                unknown,
                ", ".join(repr(k) for k in sorted(mapping)),
            )
        return np.asarray([mapping.get(name, 0) for name in names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._win_pos)

    def window_game_id(self, i: int) -> int | None:
        """The game id of window ``i`` under :attr:`game_mapping`, or None without a mapping."""
        if self._episode_game_id is None:
            return None
        return int(self._episode_game_id[int(self.window_episode[i])])

    def window_game(self, i: int) -> str | None:
        """The game of window ``i`` (its ``game`` column), or None when the dataset has no such column."""
        if not self._has_game_column:
            return None
        return str(self.episode_keys[int(self.window_episode[i])][0])  # keys are (game, episode id)

    def window_rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset rows of window ``i``: ``(frame_rows (F,) with -1 for invalid slots, action_rows (H,))``."""
        cfg = self.config
        p, s = int(self._win_pos[i]), int(self._win_start[i])
        offsets = np.arange(cfg.context_length - 1, -1, -1, dtype=np.int64) * cfg.frame_spacing
        fpos = p - offsets
        frame_rows = np.where(fpos >= s, self.order[np.maximum(fpos, s)], -1)
        a = p + cfg.action_shift
        return frame_rows, self.order[a : a + cfg.action_horizon]

    # ----------------------------------------------------------------------------- frames
    def decode_image(self, value: Any, row_index: int) -> np.ndarray:
        """Decode one image cell to RGB uint8 ``(H, W, 3)`` with :attr:`images`; raises
        :class:`CorruptRowError` saying why the reader refused it.

        A subclass may override this (e.g. to count decodes); the cache calls it once per row.
        """
        try:
            return self.images.read(value)
        except ValueError as exc:  # the reader's one-line reason
            raise CorruptRowError(row_index, self.mapper.config.image, str(exc)) from exc

    def prepare_frame(self, rgb: np.ndarray) -> np.ndarray:
        """Mask (``mask_rect`` in source pixels, black) and squash to ``S x S`` with INTER_AREA."""
        rect = self.config.mask_rect
        if rect is not None:
            x, y, w, h = rect
            rgb = rgb.copy()
            rgb[y : y + h, x : x + w] = 0
        return resize_frame(np.ascontiguousarray(rgb), self.config.image_size)

    def _load_frame(self, row: int) -> np.ndarray:
        if self._cache_path is not None:
            if self._cache is None:  # opened lazily: once per process, never pickled
                self._cache = np.load(self._cache_path, mmap_mode="r")
            if self._bad_image[row]:
                raise CorruptRowError(row, self.mapper.config.image, "undecodable image (recorded in the cache)")
            return np.asarray(self._cache[row])
        if self._bad_image[row] and row in self.bad_rows:  # refused once in this process: not read again
            err = self.bad_rows[row]
            raise CorruptRowError(row, err.column, err.reason)
        value = self._images[int(row)][self.mapper.config.image]
        return self.prepare_frame(self.decode_image(value, int(row)))

    # ----------------------------------------------------------------------------- cache
    def cache_key(self) -> str:
        """Hash of (dataset fingerprint, mask_rect, image_size, image column, image reader, cache version)."""
        if self._fingerprint is None:
            raise ValueError("the dataset has no fingerprint; it cannot be cached")
        cfg = self.config
        reader = [str(self.images.image_root) if self.images.image_root else None, self.images.max_pixels]
        blob = json.dumps(
            [
                CACHE_VERSION,
                self._fingerprint,
                cfg.mask_rect,
                cfg.image_size,
                self.mapper.config.image,
                self.num_rows,
                reader,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _prepare_cache(self, cache_dir: Path) -> Path:
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = self.cache_key()
        path = cache_dir / f"frames-{key}.npy"
        bad_path = cache_dir / f"frames-{key}.bad.json"
        if path.is_file() and bad_path.is_file():
            logger.info("reusing the frame cache %s", path)
            self.cache_reused = True
        else:
            self.cache_reused = False
            self._write_cache(path, bad_path)
        for row in json.loads(bad_path.read_text()):
            self._bad_image[row] = True
            if self.skip_bad:
                self._record_bad(CorruptRowError(row, self.mapper.config.image, "undecodable image (cached)"))
        return path

    def _write_cache(self, path: Path, bad_path: Path) -> None:
        """Decode every row into ``path``, then list the undecodable rows in ``bad_path``. Both are
        written atomically, the list last: a cache counts as built only when both exist."""
        s, image = self.config.image_size, self.mapper.config.image
        bad: list[int] = []
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(self.num_rows, s, s, 3))
            try:
                for row in range(self.num_rows):
                    try:
                        out[row] = self.prepare_frame(self.decode_image(self._images[row][image], row))
                    except CorruptRowError as err:
                        if not self.skip_bad:
                            raise
                        bad.append(row)
                        self._record_bad(err)
                out.flush()
            finally:
                del out  # close the memmap before the file is renamed (or removed on error)
        atomic_write_json(bad_path, bad, indent=None)
        logger.info("wrote the frame cache %s (%d rows)", path, self.num_rows)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # each worker re-opens the memmap instead of copying it
        return state

    # ----------------------------------------------------------------------------- items
    def _record_bad(self, err: CorruptRowError) -> None:
        if err.row_index not in self.bad_rows:
            self.bad_rows[err.row_index] = err
            logger.warning("skipping bad data: %s", err)

    def _item(self, i: int) -> dict[str, Any]:
        frame_rows, action_rows = self.window_rows(i)
        if self._bad_action[action_rows].any():
            row = int(action_rows[self._bad_action[action_rows]][0])
            raise self.bad_rows.get(row) or CorruptRowError(row, "actions", "bad action row")
        s = self.config.image_size
        frames = np.zeros((len(frame_rows), s, s, 3), dtype=np.uint8)
        for k, row in enumerate(frame_rows):
            if row >= 0:
                frames[k] = self._load_frame(int(row))
        anchor = int(frame_rows[-1])
        # Targets in the model's button order (row_actions stay in the layout's).
        actions = torch.from_numpy(reorder_buttons(self.row_actions[action_rows], self.button_order, to="model").copy())
        item: dict[str, Any] = {
            "pixels": to_pixels(frames),
            "frame_valid": torch.from_numpy(frame_rows >= 0),
            "actions": actions,
            "action_mask": torch.ones_like(actions) if self.row_weights is None else self._weights(action_rows),
            "index": anchor,
        }
        if (game_id := self.window_game_id(i)) is not None:
            item["game_ids"] = torch.tensor(game_id, dtype=torch.long)
        return item

    def _weights(self, action_rows: np.ndarray) -> torch.Tensor:
        """``action_mask (H, 25)``: each action row's weight, repeated over the 25 dims."""
        w_h = torch.from_numpy(self.row_weights[action_rows].copy())  # (H,)
        return w_h[:, None].expand(-1, self.row_actions.shape[1]).contiguous()

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        i %= n
        if not self.skip_bad:
            return self._item(i)
        for step in range(n):
            j = (i + step) % n
            try:
                return self._item(j)
            except CorruptRowError as err:
                self._record_bad(err)
                if err.column == self.mapper.config.image:
                    self._bad_image[err.row_index] = True
        raise RuntimeError(f"no valid window left: all {n} windows touch bad rows ({len(self.bad_rows)} bad rows)")


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch; the same as ``torch.utils.data.default_collate``."""
    return torch.utils.data.default_collate(items)


def split_by_episode(dataset: GameplayDataset, eval_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Window indices ``(train, eval)`` with every episode entirely on one side.

    ``round(eval_fraction * episodes)`` episodes with windows (at least one when the fraction is
    positive, at most all but one) are drawn for eval with ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    episodes = np.unique(dataset.window_episode)
    n_eval = 0
    if eval_fraction > 0:
        if len(episodes) < 2:
            raise ValueError(f"need at least 2 episodes with windows to split, have {len(episodes)}")
        n_eval = min(max(1, round(eval_fraction * len(episodes))), len(episodes) - 1)
    chosen = np.random.default_rng(seed).permutation(episodes)[:n_eval]
    is_eval = np.isin(dataset.window_episode, chosen)
    return np.flatnonzero(~is_eval).tolist(), np.flatnonzero(is_eval).tolist()
