"""Test helpers: a tiny synthetic dataset in the training batch format, and a script entry point.

``python -m nitrogen.training.testing --ckpt C --out D [--resume] [key=value ...]`` fine-tunes on
the synthetic set and prints the summary as JSON (the last stdout line). It is what the SIGKILL and
multi-process tests launch. ``NITROGEN_TEST_ITEM_DELAY`` (seconds) slows each item down.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..actions import NUM_BUTTONS
from ..data.dataset import released_image_size
from .state import latest_step


def kill_at_checkpoint(cmd: list[str], out: Path, step: int, timeout: float, **popen: object) -> int:
    """Start ``cmd``, SIGKILL it once ``out`` holds a checkpoint at ``step`` or later, and return the
    exit status (``-SIGKILL``). Fails if it exits first or no such checkpoint comes in ``timeout`` s."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]
    deadline = time.monotonic() + timeout
    try:
        while (latest_step(out) or 0) < step:
            assert proc.poll() is None, f"the run exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"no checkpoint at step >= {step} within {timeout:g} s"
            time.sleep(0.02)  # polling a folder, not synchronising threads
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        rc = proc.wait()
        proc.stderr.close()
    return rc


class SyntheticDataset(Dataset):
    """``n`` fixed samples: random pixels in [-1, 1], buttons 0/1 and sticks ``(v + 1) / 2``.

    With ``games`` > 0, sample ``i`` belongs to game ``f"game{i % games}"`` (:meth:`window_game`).
    ``image`` is the frame side: the checkpoint's tower's (default: the released tower's).
    """

    def __init__(
        self, n: int = 8, horizon: int = 18, frames: int = 1, image: int | None = None, seed: int = 0, games: int = 0
    ):
        self.n, self.horizon, self.frames, self.seed = n, horizon, frames, seed
        self.image = image or released_image_size()
        self.games = games
        self.delay = float(os.environ.get("NITROGEN_TEST_ITEM_DELAY", "0") or 0)

    def __len__(self) -> int:
        return self.n

    def window_game(self, i: int) -> str | None:
        return f"game{i % self.games}" if self.games else None

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self.delay:
            time.sleep(self.delay)
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        pixels = torch.rand(self.frames, 3, self.image, self.image, generator=g) * 2 - 1
        buttons = (torch.rand(self.horizon, NUM_BUTTONS, generator=g) < 0.3).float()
        sticks = (torch.rand(self.horizon, 4, generator=g) * 2 - 1 + 1) / 2
        actions = torch.cat([buttons, sticks], dim=-1)
        return {
            "pixels": pixels,
            "frame_valid": torch.ones(self.frames, dtype=torch.bool),
            "actions": actions,
            "action_mask": torch.ones_like(actions),
            "index": torch.tensor(i, dtype=torch.long),
        }


def main(argv: list[str] | None = None) -> None:
    from ..model.checkpoint import vision_spec_for
    from .config import load_config
    from .run import finetune, starting_checkpoint

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="FinetuneConfig key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(None, args.overrides)
    raw = starting_checkpoint(args.ckpt, config.seed)
    image = vision_spec_for(raw).image_size
    evalset = SyntheticDataset(args.eval_samples, image=image, seed=1) if args.eval_samples else None
    summary = finetune(config, raw, SyntheticDataset(args.samples, image=image), evalset, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"} | {"losses": summary["losses"]}))


if __name__ == "__main__":
    main()
