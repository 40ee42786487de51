"""Atomic training checkpoints: ``out_dir/checkpoints/step-N/`` plus a ``latest`` pointer.

A checkpoint folder is written under a temporary name and renamed into place, and ``latest`` (a
text file holding ``step-N``) is replaced atomically afterwards, so a crash at any moment leaves
either the previous or the new checkpoint as the latest, never a partial one. Every file, in the
folder and the pointer, is written with :mod:`nitrogen.atomic` (fsynced before it is named). Contents::

    weights.safetensors   trainable weights (lora mode) or the full model state (full mode)
    ema.safetensors       EMA of the trainable weights, when enabled
    optimizer.pt          optimizer state_dict
    scheduler.pt          LR scheduler state_dict
    rng-<rank>.pt         python / numpy / torch (and CUDA) RNG states of each process
    state.json            step, data position (epoch, batch), num_processes, batch_size
    config.json           the FinetuneConfig
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write

LATEST = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The folder ``latest`` points to, or None when there is no complete checkpoint."""
    pointer = checkpoints_dir(out_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = checkpoints_dir(out_dir) / pointer.read_text().strip()
    return folder if (folder / "state.json").is_file() else None


def latest_step(out_dir: Path) -> int | None:
    """The step of the latest complete checkpoint (reads only the pointer), or None."""
    folder = latest_checkpoint(out_dir)
    if folder is None:
        return None
    found = STEP_DIR.match(folder.name)
    return int(found.group(1)) if found else None


def staging_dir(out_dir: Path, step: int) -> Path:
    return checkpoints_dir(out_dir) / f".tmp-step-{step}"


def publish(out_dir: Path, step: int, keep_last: int) -> Path:
    """Rename the staged folder of ``step`` into place, move ``latest`` to it, prune old ones."""
    ck = checkpoints_dir(out_dir)
    final = ck / f"step-{step}"
    if final.exists():  # left by an interrupted run that went past the checkpoint we resumed from
        shutil.rmtree(final)
    os.replace(staging_dir(out_dir, step), final)
    atomic_write(ck / LATEST, final.name)
    steps = sorted(int(m.group(1)) for p in ck.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(ck / f"step-{old}", ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain data (tensors, numbers, tuples), so it loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
