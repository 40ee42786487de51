"""Samples/s of the fine-tuning data pipeline alone (decode, squash, window, collate).

Run from the repository root::

    PYTHONPATH=. python bench/data.py                  # 400 real Breakout frames as PNG rows

It writes a real parquet dataset of Atari frames, then measures a shuffled DataLoader at batch 8
with 0 and 2 workers, PNG decoding vs the decoded-frame cache, and 1 vs 2 frames of context.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import machine_info  # bench/machine.py (this folder is on sys.path)
from PIL import Image

from nitrogen.data import BUTTON_COLUMNS, GameplayDataset, WindowConfig, load_gameplay, measure_throughput


def write_dataset(root: Path, frames: int) -> Path:
    import ale_py
    import datasets
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0, render_mode="rgb_array")
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {"image": [], "episode_id": [], "frame": [], "j_left": [], "j_right": []}
    cols.update({name: [] for name in BUTTON_COLUMNS})
    obs, _ = env.reset(seed=0)
    for i in range(frames):
        buf = io.BytesIO()
        Image.fromarray(obs).save(buf, format="PNG")
        cols["image"].append({"bytes": buf.getvalue(), "path": None})
        cols["episode_id"].append(i // 200)
        cols["frame"].append(i % 200)
        for name in BUTTON_COLUMNS:
            cols[name].append(bool(rng.random() < 0.2))
        cols["j_left"].append(rng.uniform(-1, 1, 2).tolist())
        cols["j_right"].append(rng.uniform(-1, 1, 2).tolist())
        obs, *_ = env.step(int(rng.integers(4)))
    env.close()
    path = root / "gameplay.parquet"
    datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image()).to_parquet(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        table = load_gameplay(write_dataset(Path(tmp), args.frames))
        for context in (1, 2):
            window = WindowConfig(context_length=context, frame_spacing=4)
            for cached in (False, True):
                cache = Path(tmp) / "cache" if cached else None
                dataset = GameplayDataset(table, window, cache_dir=cache)
                for workers in (0, 2):
                    runs = [
                        measure_throughput(dataset, batch_size=8, num_workers=workers, batches=args.batches, seed=r)
                        for r in range(args.repeats)
                    ]
                    rows.append((context, "frame cache" if cached else "PNG decode", workers, statistics.median(runs)))
                    print(f"  context {context}, cached={cached}, workers={workers}: done", file=sys.stderr)
    print("## Fine-tuning data pipeline\n")
    for key, value in machine_info().items():
        print(f"- {key}: {value}")
    print(f"\n{args.frames} Breakout frames (210x160 PNG), batch 8, median of {args.repeats} runs\n")
    print("| context | pipeline | workers | samples/s |")
    print("|--:|---|--:|--:|")
    for context, pipeline, workers, sps in rows:
        print(f"| {context} | {pipeline} | {workers} | {sps:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
