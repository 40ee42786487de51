"""What a few-step student keeps (issue 23): agreement with the 16-step teacher, game score, CPU latency.

Contenders, for each ``K`` of ``--steps``: the teacher at its own step count (16 for the shipped
agent: the reference), the teacher at ``K`` steps without distillation, and the distilled student
at ``K`` steps (``--student K=PATH``).

* ``agreement``: frames from seeds the teacher never trained on (``--data``: a dataset recorded
  with ``nitrogen record`` at unseen seeds), windowed exactly as training does. Every contender
  samples every frame from the same noise A as the reference, and again from noise B. Against the
  reference's chunks (noise A) it reports, on the decoded actions (buttons at 0.5, sticks clipped):
  *button match*: the share of the chunk's actions (one 60 Hz frame each) whose 21 buttons all
  match; *stick MAE* in [-1, 1] units; *first-action match*: the share of frames whose first action's
  buttons all match. ``same noise`` compares at noise A (the ODE map the student distils);
  ``other noise`` at noise B, which for the teacher is its agreement with itself across noise
  seeds: the floor set by the policy's own randomness, and the like-for-like yardstick.
* ``scores``: game score mean and std over ``--seeds`` (the card's evaluation seeds, which training
  never saw) through the benchmark harness, sync mode, the card's frame budget and receding horizon.
* ``latency``: median CPU time per chunk (one ``predict``: vision tower, conditioning, K steps) of
  each contender, round-robin over ``--repeats`` chunks.

Run from the repository root::

    PYTHONPATH=. python bench/distill.py agreement --data runs/unseen --student 2=runs/d2/model.pt --json a.json
    PYTHONPATH=. python bench/distill.py scores --student 2=runs/d2/model.pt --seeds 0,1,2,3,4,5,6,7
    PYTHONPATH=. python bench/distill.py latency --student 2=runs/d2/model.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nitrogen.actions import BUTTON_SLICE, BUTTON_THRESHOLD
from nitrogen.atomic import atomic_write_json
from nitrogen.model.card import agent_path, load_card
from nitrogen.model.checkpoint import load_model, read_checkpoint
from nitrogen.training.evaluation import batch_condition
from nitrogen.training.metrics import STICK_SLICE

Contender = tuple[str, str, int]  # (label, checkpoint, steps)


def contenders(teacher: str, students: dict[int, str], steps: Sequence[int]) -> list[Contender]:
    own = read_checkpoint(teacher).config.model_cfg.num_inference_timesteps
    out: list[Contender] = [(f"teacher {own}", teacher, own)]
    for k in steps:
        out.append((f"teacher {k}", teacher, k))
        if k in students:
            out.append((f"student {k}", students[k], k))
    return out


def agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Decoded-action agreement of chunks ``pred`` with ``ref``, both ``(N, H, 25)``."""
    pb, rb = pred[..., BUTTON_SLICE] > BUTTON_THRESHOLD, ref[..., BUTTON_SLICE] > BUTTON_THRESHOLD
    match = (pb == rb).all(axis=-1)  # (N, H)
    ps = np.clip(pred[..., STICK_SLICE] * 2 - 1, -1, 1)
    rs = np.clip(ref[..., STICK_SLICE] * 2 - 1, -1, 1)
    return {
        "button_match": float(match.mean()),
        "stick_mae": float(np.abs(ps - rs).mean()),
        "first_action_match": float(match[:, 0].mean()),
    }


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 18, 25, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def run_agreement(args: argparse.Namespace) -> dict[str, Any]:
    from nitrogen.training.run import prepare_finetune

    prep = prepare_finetune([str(d) for d in args.data], read_checkpoint(args.teacher), eval_fraction=0)
    rows = np.linspace(0, len(prep.dataset) - 1, min(args.frames, len(prep.dataset))).round().astype(int)
    items = [prep.dataset[int(i)] for i in rows]
    games = [prep.dataset.window_game(int(i)) or "all" for i in rows]
    print(f"{len(items)} frames from {', '.join(map(str, args.data))}", file=sys.stderr, flush=True)
    batches = [torch.utils.data.default_collate(items[i : i + 64]) for i in range(0, len(items), 64)]
    noise_a, noise_b = _noise(len(items), 1), _noise(len(items), 2)
    chunks: dict[tuple[str, str], np.ndarray] = {}
    models: dict[str, Any] = {}
    for label, path, steps in contenders(args.teacher, args.student, args.steps):
        model = models.get(path) or models.setdefault(path, load_model(path)[0])
        for tag, noise in (("A", noise_a), ("B", noise_b)):
            out, lo = [], 0
            for batch in batches:
                n = len(batch["index"])
                out.append(model.sample(batch_condition(model, batch), noise[lo : lo + n], steps).float().numpy())
                lo += n
            chunks[(label, tag)] = np.concatenate(out)
        print(f"  {label} done", file=sys.stderr, flush=True)
    names = list(dict.fromkeys(label for label, _ in chunks))
    ref = chunks[(names[0], "A")]
    labels = np.asarray(games)
    result: dict[str, Any] = {"frames": len(items), "reference": f"{names[0]}, noise A", "rows": []}
    for label in names:
        for tag, kind in (("A", "same noise"), ("B", "other noise")):
            if label == names[0] and tag == "A":
                continue
            row = {"contender": label, "noise": kind, **agreement(chunks[(label, tag)], ref)}
            row["by_game"] = {
                g: agreement(chunks[(label, tag)][labels == g], ref[labels == g]) for g in sorted(set(games))
            }
            result["rows"].append(row)
    return result


def agreement_table(result: dict[str, Any]) -> str:
    lines = [
        f"Agreement with the {result['reference']} on {result['frames']} unseen frames:",
        "",
        "| contender | noise | button match | stick MAE | first-action match |",
        "|---|---|--:|--:|--:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['contender']} | {r['noise']} | {100 * r['button_match']:.1f}% | {r['stick_mae']:.4f} "
            f"| {100 * r['first_action_match']:.1f}% |"
        )
    return "\n".join(lines)


def run_scores(args: argparse.Namespace) -> dict[str, Any]:
    from nitrogen.runtime.benchmark import run_benchmark, summarize
    from nitrogen.runtime.sources import make_policy

    card = load_card()
    max_frames = args.max_frames or card.evaluation.get("max_frames", 3000)
    per_chunk = args.actions_per_chunk or card.evaluation.get("actions_per_chunk", 3)
    entries = [c for c in contenders(args.teacher, args.student, args.steps) if c[0] not in args.skip]
    policies = {
        label: make_policy(f"ckpt:{path}", seed=args.seeds[0], num_steps=steps) for label, path, steps in entries
    }

    def report(r: Any) -> None:
        print(
            f"  {r.env} {r.contender} seed {r.seed}: {r.score:g} ({r.latency_ms:.1f} ms)", file=sys.stderr, flush=True
        )

    try:
        results = run_benchmark(
            args.games,
            {label: (lambda env, p=p: p) for label, p in policies.items()},
            args.seeds,
            max_frames=max_frames,
            actions_per_chunk=per_chunk,
            on_episode=report,
        )
    finally:
        for p in policies.values():
            p.close()
    return {
        "seeds": args.seeds,
        "max_frames": max_frames,
        "actions_per_chunk": per_chunk,
        "summaries": [s.__dict__ for s in summarize(results)],
    }


def score_table(result: dict[str, Any]) -> str:
    lines = [
        (
            f"Scores over seeds {result['seeds']} ({result['max_frames']} frames, {result['actions_per_chunk']} actions "
            "per chunk, sync):"
        ),
        "",
        "| game | contender | score mean ± std | SE | median ms per predict |",
        "|---|---|--:|--:|--:|",
    ]
    for s in result["summaries"]:
        se = s["score_std"] / max(1, s["episodes"]) ** 0.5
        lines.append(
            f"| {s['env']} | {s['contender']} | {s['score_mean']:.1f} ± {s['score_std']:.1f} | {se:.1f} "
            f"| {s['latency_ms']:.1f} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    from nitrogen.inference.session import InferenceSession

    entries = contenders(args.teacher, args.student, args.steps)
    sessions = {
        label: InferenceSession.from_checkpoint(path, num_steps=steps, seed=0) for label, path, steps in entries
    }
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (210, 160, 3), dtype=np.uint8) for _ in range(8)]
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for rep in range(args.repeats + 1):
        for label, session in sessions.items():
            t0 = time.perf_counter()
            session.predict(frames[rep % len(frames)])
            if rep:
                times[label].append((time.perf_counter() - t0) * 1e3)
    return {
        "repeats": args.repeats,
        "rows": [
            {"contender": label, "median_ms": statistics.median(v), "min_ms": min(v)} for label, v in times.items()
        ],
    }


def latency_table(result: dict[str, Any]) -> str:
    lines = ["| contender | median ms per chunk | min ms |", "|---|--:|--:|"]
    lines += [f"| {r['contender']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} |" for r in result["rows"]]
    return "\n".join(lines)


def _students(items: Sequence[str]) -> dict[int, str]:
    out = {}
    for item in items:
        k, sep, path = item.partition("=")
        if not sep or not k.isdigit():
            raise SystemExit(f"--student must be K=PATH, got {item!r}")
        out[int(k)] = path
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("agreement", "scores", "latency"))
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: the shipped agent)")
    parser.add_argument("--student", action="append", default=[], help="K=PATH of a K-step student (repeatable)")
    parser.add_argument("--steps", default="1,2,4", help="the K to compare (default 1,2,4)")
    parser.add_argument("--data", type=Path, action="append", default=[], help="agreement: unseen-seed datasets")
    parser.add_argument("--frames", type=int, default=512, help="agreement: frames, spread evenly (default 512)")
    parser.add_argument("--games", default="ale:Freeway,ale:Gopher", help="scores: games")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="scores: episode seeds")
    parser.add_argument("--skip", default="", help="scores: contenders to leave out, comma-separated labels")
    parser.add_argument("--max-frames", type=int, default=None, help="scores: frame budget (default: the card's)")
    parser.add_argument("--actions-per-chunk", type=int, default=None, help="scores: default the card's")
    parser.add_argument("--repeats", type=int, default=30, help="latency: timed chunks per contender")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.teacher = args.teacher or str(agent_path())
    args.student = _students(args.student)
    args.steps = [int(s) for s in args.steps.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.games = args.games.split(",")
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    t0 = time.perf_counter()
    run, table = {
        "agreement": (run_agreement, agreement_table),
        "scores": (run_scores, score_table),
        "latency": (run_latency, latency_table),
    }[args.what]
    result = run(args)
    result["uptime_before"] = load
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    result["wall_s"] = time.perf_counter() - t0
    result["students"] = {str(k): v for k, v in args.student.items()}
    print(table(result))
    print(f"\nload: before `{load}`, after `{result['uptime_after']}`; {result['wall_s']:.0f} s")
    if args.json is not None:
        atomic_write_json(args.json, json.loads(json.dumps(result, default=str)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
