"""From a released checkpoint and gameplay datasets to a fine-tuned, exported model.

:func:`prepare_finetune` assembles a run (config, starting checkpoint, windows cut to the
checkpoint, train/eval split by episode, game ids); :func:`finetune` trains and exports it::

    prep = prepare_finetune(["data/"], "ng.pt", overrides=["max_steps=100"])
    finetune(prep.config, prep.checkpoint, prep.train, prep.eval, "runs/ft")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from ..data import (
    MAPPING_PRESETS,
    MAX_IMAGE_PIXELS,
    GameplayDataset,
    MappingConfig,
    WindowConfig,
    load_gameplay,
    load_gameplays,
    load_mapping,
    split_by_episode,
)
from ..data.dataset import SEGMENT_COLUMN
from ..data.schema import EXTRA_COLUMNS
from ..model.checkpoint import RawCheckpoint, model_from_checkpoint, read_checkpoint
from ..model.presets import INIT_PREFIX, init_checkpoint
from .config import FinetuneConfig, load_config, with_overrides
from .trainer import Trainer


def starting_checkpoint(spec: str | os.PathLike[str], seed: int = 0) -> RawCheckpoint:
    """What a run starts from: a checkpoint file, or ``init:PRESET`` for a fresh model (seeded)."""
    text = os.fspath(spec)
    if text.startswith(INIT_PREFIX):
        return init_checkpoint(text[len(INIT_PREFIX) :], seed=seed)
    return read_checkpoint(text)


def parse_data_spec(text: str) -> tuple[str, float]:
    """``--data SOURCE[:WEIGHT]``: ``runs/r0:2`` -> ``("runs/r0", 2.0)``; without a numeric
    suffix (``hf://...``, ``C:\\data``) the whole text is the source, with weight 1."""
    source, sep, tail = text.rpartition(":")
    if sep and source:
        try:
            weight = float(tail)
        except ValueError:
            return text, 1.0
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"the weight after ':' in --data must be a finite number >= 0, got {tail!r}")
        return source, weight
    return text, 1.0


def row_weights(
    part: Any, weight: float = 1.0, intervention_weight: float = 1.0, passive_weight: float = 1.0
) -> np.ndarray:
    """Per-row training weights of one gameplay dataset: ``weight`` everywhere, times
    ``intervention_weight`` on rows a person drove (``intervention``), times ``passive_weight`` on
    the other rows of a human-labelled recording (labelled with the policy's own action)."""
    w = np.full(len(part), float(weight), dtype=np.float32)
    columns = set(part.column_names)
    if "intervention" in columns:
        intervened = part.data.column("intervention").to_numpy(zero_copy_only=False).astype(bool)
        w[intervened] *= intervention_weight
        if "labeller" in columns:
            human = np.asarray(part.data.column("labeller").to_pylist()) == "human"
            w[human & ~intervened] *= passive_weight
    return w


def _separate_episodes(parts: list[Any], column: str) -> list[Any]:
    """Integer episode ids made distinct across ``parts`` (each part's shifted past the previous
    ones'), so that two recordings of one game, both numbered from episode 0 (DAgger rounds), stay
    separate episodes instead of being merged and interleaved by frame number."""
    import pyarrow as pa

    if len(parts) < 2 or not all(column in p.column_names for p in parts):
        return parts
    columns = [p.data.column(column) for p in parts]
    if not all(pa.types.is_integer(c.type) for c in columns):
        return parts
    out, offset = [], 0
    for part, ids in zip(parts, columns, strict=True):
        values = ids.to_numpy().astype(np.int64)
        shifted = values - (values.min() if len(values) else 0) + offset
        offset = int(shifted.max()) + 1 if len(values) else offset
        out.append(part.remove_columns([column]).add_column(column, shifted.tolist()))
    return out


def _harmonise(parts: list[Any], episode_column: str) -> list[Any]:
    """Sources of different kinds made concatenable: the :data:`~nitrogen.data.schema.EXTRA_COLUMNS`
    that not every source has are dropped, a source without a ``segment`` column is one segment per
    episode, and where integer and string episode ids meet, every id becomes ``"<source>:<id>"``."""
    if len(parts) < 2:
        return parts
    shared = set.intersection(*(set(p.column_names) for p in parts))
    parts = [p.remove_columns([c for c in EXTRA_COLUMNS if c in p.column_names and c not in shared]) for p in parts]
    if any(SEGMENT_COLUMN in p.column_names for p in parts):
        parts = [p if SEGMENT_COLUMN in p.column_names else p.add_column(SEGMENT_COLUMN, [0] * len(p)) for p in parts]
    kinds = {p.features[episode_column].dtype for p in parts if episode_column in p.column_names}
    if len(kinds) > 1:
        parts = [
            p.remove_columns([episode_column]).add_column(episode_column, [f"{i}:{e}" for e in p[episode_column]])
            if episode_column in p.column_names
            else p
            for i, p in enumerate(parts)
        ]
    return [_cast_like(p, parts[0]) for p in parts]


def _cast_like(part: Any, first: Any) -> Any:
    """``part`` with the value types of ``first``'s columns (e.g. float64 sticks as the recorder's
    float32 pairs), where it has the same columns and the cast is possible; otherwise as it is, and
    :func:`_aggregate` names the source that differs."""
    import datasets

    if set(part.column_names) != set(first.column_names) or part.features == first.features:
        return part
    try:
        return part.cast(datasets.Features({name: first.features[name] for name in part.column_names}))
    except (ValueError, TypeError):
        return part


def _aggregate(
    sources: Sequence[Any],
    weights: Sequence[float],
    intervention_weight: float,
    passive_weight: float,
    episode_column: str = "episode_id",
) -> tuple[Any, np.ndarray | None]:
    """Load and concatenate ``sources`` with their per-row weights (None when all are 1). Columns
    only some sources have are reconciled (:func:`_harmonise`), so DAgger rounds, plain recordings
    and imports of the released dataset mix, and integer episode ids are made distinct across
    sources (:func:`_separate_episodes`)."""
    parts = [load_gameplay(s) for s in sources]
    w = np.concatenate(
        [row_weights(p, wt, intervention_weight, passive_weight) for p, wt in zip(parts, weights, strict=True)]
    )
    parts = _separate_episodes(_harmonise(parts, episode_column), episode_column)
    for source, part in zip(sources[1:], parts[1:], strict=True):
        if set(part.column_names) != set(parts[0].column_names):  # named by source, not by the loaded table
            raise ValueError(
                f"{source}: columns {sorted(part.column_names)} differ from {sources[0]}'s {sorted(parts[0].column_names)}"
            )
    return load_gameplays(parts), (None if bool((w == 1.0).all()) else w)


@dataclass(frozen=True)
class PreparedFinetune:
    """What :func:`prepare_finetune` assembled: everything :func:`finetune` takes but the run folder."""

    config: FinetuneConfig
    checkpoint: RawCheckpoint
    """The starting checkpoint; :func:`finetune` empties its ``state_dict`` once the model holds the tensors."""
    window: WindowConfig
    """Windowing and frame size, from the checkpoint (``context`` overrides its frame count)."""
    dataset: GameplayDataset
    """All windows; items carry ``game_ids`` when the checkpoint is game-conditioned."""
    train_indices: list[int]
    eval_indices: list[int]
    """Window indices of each side of the split by episode (``eval_indices`` empty without eval)."""

    @property
    def train(self) -> Subset:
        return Subset(self.dataset, self.train_indices)

    @property
    def eval(self) -> Subset | None:
        return Subset(self.dataset, self.eval_indices) if self.eval_indices else None


def prepare_finetune(
    data: Any,
    ckpt: str | os.PathLike[str] | RawCheckpoint,
    *,
    config: FinetuneConfig | str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    mapping: str | MappingConfig | None = None,
    deadzone: float | None = None,
    context: int | None = None,
    eval_fraction: float = 0.1,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    button_order: str = "alphabetical",
    weights: Sequence[float] | None = None,
    intervention_weight: float = 1.0,
    passive_weight: float = 1.0,
) -> PreparedFinetune:
    """Assemble a fine-tuning run, as ``nitrogen finetune`` does.

    * ``data``: a gameplay source, or a list of them, for :func:`~nitrogen.data.load_gameplays` (hub
      ids, folders, parquet files, ``datasets.Dataset`` objects).
    * ``ckpt``: a checkpoint file, ``init:PRESET`` (seeded with the config's seed) or a read checkpoint.
    * ``config``: a :class:`FinetuneConfig`, a YAML/JSON file of its fields, or None for the defaults;
      ``overrides`` (``key=value``) apply on top.
    * ``mapping``: a column mapping (a preset name such as ``nes``, a file, or a :class:`MappingConfig`);
      ``deadzone`` replaces its stick deadzone (on the ``xbox`` preset when no mapping is given).
    * ``context``: frames per sample instead of the checkpoint's.
    * ``eval_fraction``: share of episodes held out (0: no eval set), split with the config's seed.
    * ``image_root``: the folder that image cells holding only a relative path are read from, never
      outside it; without it such cells are corrupt rows (training reads image bytes only).
      ``max_image_pixels``: the largest image decoded (checked on its header first).
    * ``button_order``: the checkpoint's order of button dims (:data:`nitrogen.actions.BUTTON_ORDERS`);
      training targets are permuted into it.
    * ``weights``: one training weight per source (``--data DIR:WEIGHT``); ``intervention_weight``
      multiplies the rows a person drove in a human-labelled recording, ``passive_weight`` its other
      rows (0 drops them). See :func:`row_weights`; the weights reach the loss through ``action_mask``.

    Windows take the checkpoint's windowing and the frame size of its vision tower
    (:meth:`WindowConfig.from_checkpoint`). A game-conditioned checkpoint gets ``game_ids`` from
    the data's ``game`` column through its game mapping (see :class:`~nitrogen.data.GameplayDataset`).
    Raises what loading raises: ``NitrogenError``, ``CorruptRowError``, ``ValidationError``,
    ``ValueError``, ``OSError``.
    """
    if isinstance(config, FinetuneConfig):
        cfg = with_overrides(config, list(overrides))
    else:
        cfg = load_config(config, list(overrides))
    raw = ckpt if isinstance(ckpt, RawCheckpoint) else starting_checkpoint(ckpt, cfg.seed)
    window = WindowConfig.from_checkpoint(raw, **({} if context is None else {"context_length": context}))
    sources = list(data) if isinstance(data, (list, tuple)) else [data]
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise ValueError(f"{len(weights)} weights for {len(sources)} datasets")
    for name, value in (
        ("intervention_weight", intervention_weight),
        ("passive_weight", passive_weight),
        *(("weight", w) for w in weights),
    ):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    columns = _column_mapping(mapping, deadzone)
    episode_column = (columns or MappingConfig()).episode_id
    table, per_row = _aggregate(sources, weights, intervention_weight, passive_weight, episode_column)
    dataset = GameplayDataset(
        table,
        window,
        mapping=columns,
        skip_bad=skip_bad,
        cache_dir=cache_dir,
        game_mapping=raw.game_mapping,
        image_root=image_root,
        max_image_pixels=max_image_pixels,
        button_order=button_order,
        row_weights=per_row,
    )
    if eval_fraction:
        train_idx, eval_idx = split_by_episode(dataset, eval_fraction, seed=cfg.seed)
    else:
        train_idx, eval_idx = list(range(len(dataset))), []
    return PreparedFinetune(cfg, raw, window, dataset, train_idx, eval_idx)


def _column_mapping(mapping: str | MappingConfig | None, deadzone: float | None) -> MappingConfig | None:
    """A preset name, a mapping file or a :class:`MappingConfig`, with ``deadzone`` applied."""
    columns = MAPPING_PRESETS.get(mapping, None) if isinstance(mapping, str) else mapping
    if isinstance(mapping, str) and columns is None:
        columns = load_mapping(mapping)
    if deadzone is not None:
        columns = (columns or MAPPING_PRESETS["xbox"]).model_copy(update={"deadzone": deadzone})
    return columns


def finetune(
    config: FinetuneConfig,
    ckpt_path: str | os.PathLike[str] | RawCheckpoint,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
) -> dict[str, Any]:
    """Load ``ckpt_path``, apply LoRA/freezing per ``config``, train (resuming from
    ``out_dir/checkpoints/latest`` if ``resume``), export, and return a summary dict with ``step``,
    ``losses``, ``eval``, parameter counts and the exported ``paths``.

    ``ckpt_path`` may be ``init:PRESET`` (a fresh model from :mod:`nitrogen.model.presets`, initialised with
    ``config.seed``) or an already read checkpoint.
    """
    raw = ckpt_path if isinstance(ckpt_path, RawCheckpoint) else starting_checkpoint(ckpt_path, config.seed)
    model = model_from_checkpoint(raw)
    raw.state_dict = {}  # the model holds the tensors now
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, model, raw, train_dataset, eval_dataset, out)
    summary = trainer.train(resume=resume)
    summary["paths"] = trainer.export()
    return summary
