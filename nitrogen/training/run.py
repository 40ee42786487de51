"""One call from a released checkpoint and datasets to a fine-tuned, exported model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..model.checkpoint import RawCheckpoint, model_from_checkpoint, read_checkpoint
from ..model.presets import INIT_PREFIX, init_checkpoint
from .config import FinetuneConfig
from .trainer import Trainer


def starting_checkpoint(spec: str | os.PathLike[str], seed: int = 0) -> RawCheckpoint:
    """What a run starts from: a checkpoint file, or ``init:PRESET`` for a fresh model (seeded)."""
    text = os.fspath(spec)
    if text.startswith(INIT_PREFIX):
        return init_checkpoint(text[len(INIT_PREFIX) :], seed=seed)
    return read_checkpoint(text)


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
