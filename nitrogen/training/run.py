"""One call from a released checkpoint and datasets to a fine-tuned, exported model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..checkpoint import load_model
from .config import FinetuneConfig
from .trainer import Trainer


def finetune(
    config: FinetuneConfig,
    ckpt_path: str | os.PathLike[str],
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
) -> dict[str, Any]:
    """Load ``ckpt_path``, apply LoRA/freezing per ``config``, train (resuming from
    ``out_dir/checkpoints/latest`` if ``resume``), export, and return a summary dict with ``step``,
    ``losses``, ``eval``, parameter counts and the exported ``paths``."""
    model, raw = load_model(ckpt_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, model, raw, train_dataset, eval_dataset, out)
    summary = trainer.train(resume=resume)
    summary["paths"] = trainer.export()
    return summary
