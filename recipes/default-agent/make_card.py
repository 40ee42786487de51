"""Write the default agent's card (agent.json) from a recipe run, and install the agent.

Reads WORK/data/*/info.json (recordings), WORK/train/run.json and metrics.csv (training) and
WORK/eval/results.json (evaluation on unseen seeds), checks the bar
(agent - random) >= 0.4 * (expert - random) for every game, and copies model.pt and agent.json
into --install. Part of recipes/default-agent/train.sh.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from nitrogen.atomic import atomic_write
from nitrogen.model.card import CARD_FILE, MODEL_FILE, AgentCard, PlaySettings, file_sha256

BAR = 0.4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--actions-per-chunk", type=int, required=True)
    parser.add_argument("--max-frames", type=int, required=True)
    parser.add_argument("--train-seconds", type=float, default=None)
    parser.add_argument("--install", type=Path, required=True)
    args = parser.parse_args()
    work: Path = args.work

    recordings = [json.loads(p.read_text()) for p in sorted((work / "data").glob("*/info.json"))]
    run = json.loads((work / "train" / "run.json").read_text())
    with open(work / "train" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1] if rows else {}
    last_eval = next((r for r in reversed(rows) if r.get("eval_loss")), {})
    results = json.loads((work / "eval" / "results.json").read_text())

    by_game: dict[str, dict[str, dict]] = {}
    for s in results["summaries"]:
        by_game.setdefault(s["env"], {})[s["contender"]] = s
    games, table, passed = [], [], True
    for env, entries in by_game.items():
        agent = next(v for k, v in entries.items() if k.startswith("ckpt:"))
        random, expert = entries["random"], entries["scripted"]
        gap = expert["score_mean"] - random["score_mean"]
        closed = (agent["score_mean"] - random["score_mean"]) / gap if gap else float("nan")
        ok = agent["score_mean"] - random["score_mean"] >= BAR * gap
        passed &= ok
        games.append(env)
        table.append(
            {
                "game": env,
                "agent": agent["score_mean"],
                "agent_std": agent["score_std"],
                "random": random["score_mean"],
                "expert": expert["score_mean"],
                "gap_closed": closed,
                "bar": BAR,
                "passed": ok,
                "agent_scores": agent["scores"],
                "latency_ms": agent["latency_ms"],
            }
        )
        print(
            f"{env}: agent {agent['score_mean']:.2f}, random {random['score_mean']:.2f}, "
            f"expert {expert['score_mean']:.2f} -> gap closed {closed:.0%} ({'ok' if ok else 'BELOW BAR'})"
        )

    model = work / "train" / MODEL_FILE
    seeds = sorted({e["seed"] for e in results["episodes"]})
    card = AgentCard(
        preset="agent-small",
        games=games,
        play=PlaySettings(actions_per_chunk=args.actions_per_chunk, max_frames=args.max_frames),
        sha256=file_sha256(model),
        recipe="bash recipes/default-agent/train.sh",
        training={
            "recordings": [
                {k: r[k] for k in ("env", "agent", "episodes", "frames", "seeds", "scores", "explore")}
                for r in recordings
            ],
            "finetune_config": run["finetune_config"],
            "base_checkpoint": run["base_checkpoint"],
            "train_windows": run["train_windows"],
            "final_step": int(last.get("step", 0) or 0),
            "final_loss": float(last.get("loss", "nan") or "nan"),
            "final_eval": {k: float(v) for k, v in last_eval.items() if k.startswith("eval_") and v},
            "train_seconds": args.train_seconds,
        },
        evaluation={
            "seeds": seeds,
            "max_frames": args.max_frames,
            "actions_per_chunk": args.actions_per_chunk,
            "results": table,
            "passed": passed,
        },
    )
    args.install.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, args.install / MODEL_FILE)
    atomic_write(args.install / CARD_FILE, card.model_dump_json(indent=2) + "\n")
    print(f"installed {args.install / MODEL_FILE} ({model.stat().st_size / 1e6:.1f} MB) and {CARD_FILE}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
