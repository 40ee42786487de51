"""Fine-tuning NitroGen: LoRA or full training on (frames, action chunk) batches.

Modules: :mod:`.config` (the validated :class:`FinetuneConfig`), :mod:`.lora` (adapter injection,
merging back to the released layout), :mod:`.trainer` (the accelerate-based loop with atomic,
exactly-resumable checkpoints), :mod:`.metrics` (evaluation metrics), :mod:`.run` (``prepare_finetune``,
which assembles a run from datasets and a checkpoint as ``nitrogen finetune`` does, and ``finetune``).
"""

from __future__ import annotations

from .config import FinetuneConfig, load_config

__all__ = ["FinetuneConfig", "load_config"]
