"""Fine-tuning speed and peak memory on this machine: tiny, presets and full-size, LoRA and full.

Run from the repository root::

    PYTHONPATH=. python bench/train.py                       # tiny + full, lora + full, CPU
    PYTHONPATH=. python bench/train.py --models tiny --steps 20
    PYTHONPATH=. python bench/train.py --models agent-small --modes full --batch 32   # the default agent's recipe

Each configuration runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its
own. A step is one optimizer step of ``--batch`` synthetic samples (256x256 frames, 18x25 actions)
through :class:`nitrogen.training.trainer.Trainer` (the same code as ``nitrogen finetune``); the
first step is a warm-up and is not timed. The full-size model is the released config with random
weights, in float32 on CPU; a preset name (``nitrogen/presets.py``) is a fresh model of that size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.atomic import atomic_write_json

REPO = Path(__file__).resolve().parent.parent
TINY = REPO.parent / "shared" / "golden" / "released_layout.pt"


def run_one(model_name: str, mode: str, batch: int, steps: int) -> dict:
    import torch

    from nitrogen.model.checkpoint import RawCheckpoint, build_model, load_model, model_from_checkpoint
    from nitrogen.model.configuration import CheckpointConfig
    from nitrogen.model.presets import PRESETS, init_checkpoint
    from nitrogen.training.config import FinetuneConfig
    from nitrogen.training.testing import SyntheticDataset
    from nitrogen.training.trainer import Trainer

    torch.manual_seed(0)
    if model_name == "tiny":
        model, raw = load_model(TINY)
    elif model_name in PRESETS:
        raw = init_checkpoint(model_name)
        model = model_from_checkpoint(raw).train()
    else:
        model, raw = build_model(CheckpointConfig()).train(), RawCheckpoint(CheckpointConfig(), {}, None)
    horizon = raw.config.model_cfg.action_horizon
    # A far max_steps, and stop_after: no end-of-run checkpoint or plot lands inside the timing.
    config = FinetuneConfig(mode=mode, max_steps=10_000, batch_size=batch, save_every=0, progress=False, log_every=1000)
    data = SyntheticDataset(n=batch * (steps + 1), horizon=horizon)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, model, raw, data, None, Path(out))
        trainer.train(stop_after=1)  # warm-up step
        start = time.perf_counter()
        trainer.train(stop_after=steps + 1)
        wall = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "model": model_name,
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "s_per_step": wall / steps,
        "samples_per_s": batch * steps / wall,
        "trainable_params": trainable,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,full")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: full 3, others 20)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "MODE", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        model, mode, batch, steps = args.one
        print(json.dumps(run_one(model, mode, int(batch), int(steps))))
        return 0

    rows = []
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            steps = args.steps or (3 if model == "full" else 20)
            cmd = [sys.executable, __file__, "--one", model, mode, str(args.batch), str(steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {model} {mode}: {rows[-1]['s_per_step']:.2f} s/step", file=sys.stderr, flush=True)

    print("## Fine-tuning speed and memory\n")
    for key, value in machine_info().items():
        print(f"- {key}: {value}")
    print("\n| model | mode | batch | trainable params | s/step | samples/s | peak RSS GB |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['trainable_params']:,} | {r['s_per_step']:.3f} | "
            f"{r['samples_per_s']:.2f} | {r['peak_rss_gb']:.2f} |"
        )
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
