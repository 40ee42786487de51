"""DAgger against plain behaviour cloning with the same labelled frames and training steps.

For each game it runs :func:`nitrogen.runtime.dagger.run_dagger` twice from the same checkpoint:

* ``dagger``: ``beta = 0``: the model drives every recorded frame, the scripted expert labels them;
* ``bc``: ``beta = 1``: the expert drives and labels (plain expert recording), everything else equal:
  the same frames per round, the same recording seeds, the same steps, the same evaluation.

Both are evaluated each round on held-out seeds that neither recording nor tuning used, with the
expert watching (score and agreement in the agent's own states); the random policy and the expert
are scored on the same seeds for the gap. Writes ``OUT/results.json``, ``OUT/results.md`` and one
``OUT/<game>.png`` (score and agreement vs round, both runs). Resumes: rerun the same command. ::

    PYTHONPATH=. python bench/dagger_vs_bc.py --games ale:Gopher,ale:Boxing --rounds 3 --out runs/dagger-bench
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.atomic import atomic_write, atomic_write_json
from nitrogen.envs import make_env
from nitrogen.rundir.plots import dagger_chart
from nitrogen.runtime.dagger import DaggerConfig, _points, evaluate, run_dagger
from nitrogen.runtime.sources import make_policy


def references(game: str, seeds: list[int], frames: int) -> dict[str, dict]:
    out = {}
    with make_env(game) as env:
        for name in ("random", "scripted"):
            policy = make_policy(name, env=env, seed=0)
            out[name] = evaluate(env, policy, seeds, max_frames=frames)
    return out


def gap(score: float, ref: dict[str, dict]) -> float:
    lo, hi = ref["random"]["score_mean"], ref["scripted"]["score_mean"]
    return (score - lo) / (hi - lo) if hi != lo else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", default="ale:Gopher,ale:Boxing")
    ap.add_argument("--init", default="nitrogen/assets/default-agent/model.pt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--frames", type=int, default=1000, help="frames per recorded episode")
    ap.add_argument("--steps", type=int, default=150, help="training steps per round")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--eval-seeds", default="500,501,502")
    ap.add_argument("--eval-frames", type=int, default=1000)
    ap.add_argument("--record-seed", type=int, default=1000)
    ap.add_argument("--actions-per-chunk", type=int, default=3)
    ap.add_argument("--num-steps", type=int, default=4, help="Euler steps of the model while it plays")
    ap.add_argument("--beta", type=float, default=0.0, help="DAgger's chance that the expert drives, round 0")
    ap.add_argument("--beta-decay", type=float, default=1.0, help="DAgger's round r uses beta * decay**r")
    ap.add_argument(
        "--runs",
        default="dagger,bc",
        help="which runs to advance (two processes can each take one; a last call with both writes the table)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/dagger-bench"))
    args = ap.parse_args()
    overrides = [
        "mode=full",
        "lr=3e-4",
        "schedule=constant",
        "batch_size=16",
        "ema=null",
        "save_every=0",
        "bf16=false",
        "log_every=25",
        "progress=false",
        *args.overrides,
    ]
    seeds = [int(s) for s in args.eval_seeds.split(",")]
    wanted = set(args.runs.split(","))
    if not wanted or not wanted <= {"dagger", "bc"}:
        ap.error(f"--runs takes dagger, bc or both, not {args.runs!r}")
    results: dict = {
        "machine": machine_info(),
        "load_at_start": os.getloadavg(),
        "args": vars(args) | {"out": str(args.out)},
    }
    results["games"] = {}
    for game in args.games.split(","):
        slug = game.split(":")[-1].lower()
        started = time.perf_counter()
        runs = {}
        for name, beta, decay in (("dagger", args.beta, args.beta_decay), ("bc", 1.0, 1.0)):
            if name not in wanted:
                continue
            config = DaggerConfig(
                env=game,
                init=args.init,
                rounds=args.rounds,
                episodes=args.episodes,
                max_frames=args.frames,
                record_seed=args.record_seed,
                beta=beta,
                beta_decay=decay,
                steps=args.steps,
                overrides=overrides,
                eval_seeds=seeds,
                eval_max_frames=args.eval_frames,
                eval_init=name == "dagger",  # the same start for both: evaluated once
                actions_per_chunk=args.actions_per_chunk,
                num_steps=args.num_steps,
            )
            runs[name] = run_dagger(config, args.out / slug / name)
        if wanted != {"dagger", "bc"}:
            continue  # one run of a pair advanced: the table needs both
        ref = references(game, seeds, args.eval_frames)
        runs["bc"]["init_eval"] = runs["dagger"]["init_eval"]
        schedule = f"beta {args.beta:g}" + (f" x {args.beta_decay:g}^round" if args.beta_decay != 1 else "")
        series = {f"DAgger ({schedule})": _points(runs["dagger"]), "behaviour cloning (beta 1)": _points(runs["bc"])}
        dagger_chart(
            series,
            args.out / f"{slug}.png",
            references={"random": ref["random"]["score_mean"], "expert": ref["scripted"]["score_mean"]},
        )
        results["games"][game] = {"references": ref, "runs": runs, "wall_s": time.perf_counter() - started}
        results["load_at_end"] = os.getloadavg()
        atomic_write_json(args.out / "results.json", results)
    if results["games"]:
        atomic_write(args.out / "results.md", table(results))
        print(table(results))


def table(results: dict) -> str:
    lines = [
        (
            "| game | run | round | frames labelled (total) | score mean ± std | gap closed "
            "| agreement in own states | CPU min (record / train / eval) |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for game, doc in results["games"].items():
        ref = doc["references"]
        for who in ("random", "scripted"):
            e = ref[who]
            agree = "-" if e["agreement"] is None else f"{e['agreement']:.2f}"
            lines.append(f"| {game} | {who} | - | - | {e['score_mean']:.1f} ± {e['score_std']:.1f} | | {agree} | |")
        init = doc["runs"]["dagger"]["init_eval"]
        lines.append(
            f"| {game} | start | - | 0 | {init['score_mean']:.1f} ± {init['score_std']:.1f} | "
            f"{gap(init['score_mean'], ref):.0%} | {init['agreement']:.2f} | - / - / {init['cpu_s'] / 60:.1f} |"
        )
        for name in ("dagger", "bc"):
            for r in doc["runs"][name]["rounds"]:
                e, cpu = r["eval"], r["cpu_s"]
                lines.append(
                    f"| {game} | {name} | {r['round']} | {r['frames_labelled_total']} | "
                    f"{e['score_mean']:.1f} ± {e['score_std']:.1f} | {gap(e['score_mean'], ref):.0%} | "
                    f"{e['agreement']:.2f} | {cpu['record'] / 60:.1f} / {cpu['train'] / 60:.1f} / {cpu['eval'] / 60:.1f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
