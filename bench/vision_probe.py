"""How fast can a vision tower, trained from scratch, learn the expert's action from one frame?

The default agent's problem (docs/BENCHMARKS.md, "The default agent") is that its vision tower does
not learn to locate ball and paddle. This probe removes everything else: no flow matching, no DiT.
A vision network plus a linear head is trained with cross-entropy to predict the expert's first
action (D-pad left / right / none) from the recorded frame, and its accuracy on held-out episodes
is printed next to the majority-class rate, every ``--every`` steps.

Towers: ``vit-P`` is the ``agent-small`` SigLIP tower with P-pixel patches (its tokens flattened
into the head), ``vit-P-wW`` the same at width W (e.g. ``vit-16-w128``: 4x the tokens at a quarter
of the per-token cost), and a ``-sincos`` suffix starts its position table from the 2-D sine-cosine
table (:func:`nitrogen.model.presets.sincos_positions`) instead of random values (the flattened head sees
each token's position anyway, so this mainly tests the start); ``cnn`` is the reference path, a
DQN-style 3-layer convolutional net.

Run from the repository root, on data from ``nitrogen record --policy scripted`` (e.g. the
recipe's ``runs/default-agent/data/pong``)::

    PYTHONPATH=. python bench/vision_probe.py --data runs/default-agent/data/pong --towers cnn,vit-32 --steps 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from machine import machine_info  # bench/machine.py (this folder is on sys.path)
from torch import nn
from torch.utils.data import DataLoader, Subset

from nitrogen.actions import BUTTONS
from nitrogen.data import GameplayDataset, WindowConfig, load_gameplays, split_by_episode
from nitrogen.model.checkpoint import model_from_checkpoint
from nitrogen.model.presets import get_preset, init_checkpoint

LEFT, RIGHT = BUTTONS.index("DPAD_LEFT"), BUTTONS.index("DPAD_RIGHT")


def labels(actions: torch.Tensor) -> torch.Tensor:
    """Expert class of the first action of each chunk ``(B, H, A)``: 0 left, 1 right, 2 neither."""
    first = actions[:, 0]
    return torch.where(first[:, LEFT] > 0.5, 0, torch.where(first[:, RIGHT] > 0.5, 1, 2))


def vit_probe(patch: int, width: int = 256, sincos: bool = False) -> nn.Module:
    """The ``agent-small`` vision tower at ``patch`` and ``width`` (MLP 2x), its (P, D) tokens into a 3-way head.

    Its position table starts random (SigLIP's start, as in the earlier probe rows) unless ``sincos``.
    """
    start = "sincos" if sincos else "random"
    preset = dataclasses.replace(
        get_preset("agent-small"), patch=patch, width=width, vision_mlp=2 * width, position_init=start
    )
    model = model_from_checkpoint(init_checkpoint(preset, 0))

    class ViTProbe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = model.vision_encoder
            self.head = nn.Linear(preset.tokens_per_frame * preset.width, 3)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            tokens = model.encode_frames(pixels)  # (B, P, D), the model's own path
            return self.head(tokens.flatten(1))

    return ViTProbe()


def cnn_probe() -> nn.Module:
    """Reference: the DQN convolutional stack (8/4, 4/2, 3/2 strides) and a 256-wide MLP head."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 8, 4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, 2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(6),
        nn.Flatten(),
        nn.Linear(64 * 36, 256),
        nn.ReLU(),
        nn.Linear(256, 3),
    )


def build(tower: str) -> nn.Module:
    if tower == "cnn":
        return cnn_probe()
    if tower.startswith("vit-"):
        spec, sincos = tower.removeprefix("vit-"), tower.endswith("-sincos")
        patch, _, width = spec.removesuffix("-sincos").partition("-w")
        return vit_probe(int(patch), int(width or 256), sincos)
    raise SystemExit(f"unknown tower {tower!r}: use cnn, vit-PATCH or vit-PATCH-wWIDTH")


def run(tower: str, dataset: GameplayDataset, train_idx: list[int], held_out: dict, args: argparse.Namespace) -> list:
    torch.manual_seed(args.seed)
    net = build(tower)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    loader = DataLoader(Subset(dataset, train_idx), batch_size=args.batch, shuffle=True, num_workers=1)
    target = labels(held_out["actions"])
    rows, step, start = [], 0, time.perf_counter()
    while step < args.steps:
        for batch in loader:
            logits = net(batch["pixels"][:, -1])  # the newest frame, (B, 3, S, S)
            loss = nn.functional.cross_entropy(logits, labels(batch["actions"]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                net.eval()
                with torch.no_grad():
                    acc = (net(held_out["pixels"][:, -1]).argmax(1) == target).float().mean().item()
                net.train()
                rows.append((tower, step, acc, time.perf_counter() - start))
                print(f"{tower:>8} step {step:>5}: held-out accuracy {acc:.3f}", flush=True)
            if step >= args.steps:
                break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a `nitrogen record` folder (one game)")
    parser.add_argument("--towers", default="cnn,vit-32")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-out", type=int, default=256, help="held-out frames scored at each report")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    raw = init_checkpoint("agent-small", 0)
    window = WindowConfig.from_checkpoint(raw)
    dataset = GameplayDataset(load_gameplays([args.data]), window)
    train_idx, eval_idx = split_by_episode(dataset, 0.1, seed=args.seed)
    pick = np.random.default_rng(args.seed).choice(eval_idx, min(args.held_out, len(eval_idx)), replace=False)
    held_out = next(iter(DataLoader(Subset(dataset, pick.tolist()), batch_size=len(pick))))
    majority = np.bincount(labels(held_out["actions"]).numpy(), minlength=3).max() / len(pick)

    rows = []
    for tower in args.towers.split(","):
        rows += run(tower, dataset, train_idx, held_out, args)

    machine = ", ".join(f"{k}: {v}" for k, v in machine_info().items())
    print(f"\n{machine}\ndata {args.data}: {len(train_idx)} train windows, {len(pick)} held-out frames")
    print(f"batch {args.batch}, lr {args.lr}; majority class (always the commonest action): {majority:.3f}\n")
    print("| tower | step | held-out accuracy | seconds |")
    print("|---|--:|--:|--:|")
    for tower, step, acc, seconds in rows:
        print(f"| {tower} | {step} | {acc:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
