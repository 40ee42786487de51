"""Latency tolerance of the shipped agent: sync, async naive, async prefix and async RTC, in simulated time.

Run from the repository root::

    PYTHONPATH=. python bench/latency.py                             # the default grid (see --help)
    PYTHONPATH=. python bench/latency.py --seeds 0 --frames 300 --latencies 0 200   # a quick look

Every episode runs the one episode loop in simulated-latency mode (``PlayConfig.latency_ms``): the
game advances one frame per 1/60 s of simulated time and never waits, a request's result becomes
usable exactly ``ceil(L * 60 / 1000)`` frames after its request frame, and the policy itself runs
synchronously, loaded afresh for each episode with the episode's seed for its noise. The scores
are therefore deterministic for a seed, whatever the machine's load and the order of the cells;
only the compute column depends on them.

Modes:

* ``sync``: the game pauses while the policy thinks, so the score does not depend on the latency.
  It is played once per seed; what latency costs is the fraction of real time the game keeps,
  ``game time / (game time + chunks * L)``.
* ``naive``: async, today's behaviour: a new chunk replaces the current one as it is; the actions
  it planned for frames already past are skipped (stale).
* ``prefix``: async, the request carries the current chunk's remaining actions and the delay ``d``;
  the ``d`` frozen actions are replaced at every Euler step (no extra compute).
* ``rtc``: async real-time chunking (Black et al. 2025): frozen actions plus guided inpainting of the
  rest of the overlap (soft mask, vector-Jacobian product, beta = 5).
* ``naive-x2``: async naive with two requests in flight (``in_flight=2``, one every
  ``max(s, ceil(latency_frames / 2))`` frames), at latencies where one request in flight cannot keep
  a chunk playing until the next arrives.
* ``prefix-x2``, ``rtc-x2``: the same pipelining with prefix or RTC chunking. A pipelined request's
  prefix is the policy's previous output (a server has computed it when the request reaches it; the
  client receives it only later), so the new chunk joins the chunk that will actually be playing.
* ``naive-x4``, ``rtc-x4``: four in flight; at 200 ms (12 frames) that is one request every 3
  frames, the card's execution horizon, so the agent replans as often as it does without latency.

The execution horizon is the card's ``actions_per_chunk`` (3), the same for every mode; with one
request in flight the next chunk is asked for as soon as the newest has arrived and ``s`` actions
of it are due, so the effective interval is ``max(s, latency)``. ``d`` is the running p90 of the
measured latency in frames (here: exactly the simulated one, from the second chunk on).

Seeds default to 0-2, the card's evaluation seeds (training recorded seeds 100-109); nothing was
tuned on them. Results go to ``--out`` (JSON with every episode, rewritten atomically after each
one, so an interrupted run resumes where it stopped) and, with ``--plot``, a PNG of score against
latency: one panel per game, one line per mode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.atomic import atomic_write_json
from nitrogen.envs import make_env
from nitrogen.model.card import load_card
from nitrogen.runtime.loop import PlayConfig, SwitchStats, run_episode
from nitrogen.runtime.sources import make_policy

MODES = ("sync", "naive", "prefix", "rtc", "naive-x2", "prefix-x2", "rtc-x2", "naive-x4", "rtc-x4")
FPS = 60.0


def cell_config(
    mode: str, latency_ms: float, frames: int, execute: int, rtc: dict[str, Any] | None = None
) -> PlayConfig:
    """The episode loop's settings for one (mode, latency) cell; ``rtc`` sets ``rtc_window`` and
    ``rtc_beta`` of the prefix and rtc modes (default: the paper's)."""
    if mode == "sync":
        return PlayConfig(mode="sync", max_frames=frames, video=False, actions_per_chunk=execute, latency_ms=0.0)
    chunking, _, copies = mode.partition("-x")
    in_flight = int(copies) if copies else 1
    if in_flight > 1:
        # Space the requests so that `in_flight` of them cover the latency: a chunk then plays until
        # the next arrives (decided from the latency alone, not tuned on any seed).
        execute = max(execute, math.ceil(math.ceil(latency_ms * FPS / 1000 - 1e-9) / in_flight))
    return PlayConfig(
        mode="async",
        max_frames=frames,
        video=False,
        chunking=chunking,
        execute=execute,
        latency_ms=latency_ms,
        in_flight=in_flight,
        **(rtc or {}),
    )


def run_cell(
    env: Any, policy: Any, mode: str, latency_ms: float, seed: int, frames: int, execute: int,
    rtc: dict[str, Any] | None = None,
) -> dict:  # fmt: skip
    switches = SwitchStats()
    stats = run_episode(env, policy, cell_config(mode, latency_ms, frames, execute, rtc), [switches], seed=seed)
    return {
        **(rtc or {}),
        "mode": mode,
        "latency_ms": latency_ms,
        "seed": seed,
        "score": stats.score,
        "frames": stats.frames,
        "chunks": stats.chunks,
        "stale": stats.stale,
        "starved": stats.starved,
        "delay_mean": float(np.mean(stats.delays)) if stats.delays else 0.0,
        "compute_ms": float(np.median(stats.latencies_ms)) if stats.latencies_ms else float("nan"),
        **switches.summary(),
    }


def realtime_fraction(frames: int, chunks: int, latency_ms: float) -> float:
    game_s = frames / FPS
    return game_s / (game_s + chunks * latency_ms / 1000)


def cells(modes: list[str], latencies: list[float], rtc_at_zero: bool = True) -> list[tuple[str, float]]:
    """The (mode, latency) cells to play: sync once (at 0), the async modes at every latency but 0
    (async naive and prefix at zero latency are the sync episode; rtc at 0 still guides the overlap
    towards the current chunk, so it is played), the pipelined -xN modes only where one request cannot
    cover."""
    out: list[tuple[str, float]] = []
    for mode in modes:
        if mode == "sync":
            out.append(("sync", 0.0))
            continue
        for lat in latencies:
            if lat == 0 and (mode != "rtc" or not rtc_at_zero):
                continue  # async naive and prefix at zero latency play the sync episode exactly
            if "-x" in mode and lat < 150:
                continue
            out.append((mode, lat))
    return out


def summarize(episodes: list[dict], latencies: list[float]) -> list[dict]:
    """Mean and std per (game, mode, latency); sync rows are expanded to every latency."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for e in episodes:
        if e["mode"] == "sync":
            for lat in latencies:
                groups.setdefault((e["game"], "sync", lat), []).append(e | {"latency_ms": lat})
            for mode in ("naive", "prefix"):  # the same episode, see cells()
                groups.setdefault((e["game"], mode, 0.0), []).append(e | {"mode": mode})
        else:
            groups.setdefault((e["game"], e["mode"], e["latency_ms"]), []).append(e)
    rows = []
    for (game, mode, lat), es in sorted(groups.items(), key=lambda kv: (kv[0][0], MODES.index(kv[0][1]), kv[0][2])):
        scores = [e["score"] for e in es]
        row = {
            "game": game,
            "mode": mode,
            "latency_ms": lat,
            "episodes": len(es),
            "seeds": [e["seed"] for e in es],
            "score_mean": statistics.fmean(scores),
            "score_std": statistics.pstdev(scores),
            "score_se": statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan"),
            "stale_per_chunk": statistics.fmean(e["stale"] / max(e["chunks"], 1) for e in es),
            "starved_frac": statistics.fmean(e["starved"] / max(e["frames"], 1) for e in es),
            "chunks": statistics.fmean(e["chunks"] for e in es),
            "delay_mean": statistics.fmean(e["delay_mean"] for e in es),
            "compute_ms": statistics.median(e["compute_ms"] for e in es),
        }
        for key in ("switch_stick", "switch_flips", "inside_stick", "inside_flips"):
            values = [e[key] for e in es if not math.isnan(e[key])]
            row[key] = statistics.fmean(values) if values else float("nan")
        row["realtime_fraction"] = (
            statistics.fmean(realtime_fraction(e["frames"], e["chunks"], lat) for e in es) if mode == "sync" else 1.0
        )
        rows.append(row)
    zero = {(r["game"], r["mode"]): r["score_mean"] for r in rows if r["mode"] == "sync"}
    for r in rows:
        ref = zero.get((r["game"], "sync"))
        r["kept_of_zero_latency"] = r["score_mean"] / ref if ref else float("nan")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            "| game | mode | latency ms | n | score mean ± std | SE | of 0 ms | real time kept | stale / chunk | starved "
            "| switch \\|Δstick\\| | inside \\|Δstick\\| | switch flips | inside flips | d | compute ms / chunk |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def f(v: float, spec: str = ".3f") -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for r in rows:
        lines.append(
            f"| {r['game']} | {r['mode']} | {r['latency_ms']:g} | {r['episodes']} | "
            f"{r['score_mean']:.1f} ± {r['score_std']:.1f} | {f(r['score_se'], '.1f')} | "
            f"{f(r['kept_of_zero_latency'], '.0%')} | {f(r['realtime_fraction'], '.0%')} | {r['stale_per_chunk']:.1f} | "
            f"{r['starved_frac']:.0%} | {f(r['switch_stick'])} | {f(r['inside_stick'])} | {f(r['switch_flips'], '.2f')} | "
            f"{f(r['inside_flips'], '.2f')} | {r['delay_mean']:.1f} | {r['compute_ms']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="+", default=None, help="default: the card's games")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=900, help="game frames per episode (60 per second)")
    parser.add_argument("--latencies", nargs="+", type=float, default=[0, 50, 100, 200, 400])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--execute", type=int, default=None, help="execution horizon s (default: the card's)")
    parser.add_argument(
        "--rtc-window", type=int, default=None,
        help="prefix/rtc: guide at most N actions past the frozen d (default: the whole overlap)",
    )  # fmt: skip
    parser.add_argument("--rtc-beta", type=float, default=None, help="rtc: the guidance cap (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded machine)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench_latency.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG of score against latency")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    parser.add_argument("--no-rtc-at-zero", action="store_true", help="skip async rtc at 0 ms (the costliest cell)")
    parser.add_argument("--report", nargs="+", type=Path, default=None, help="only report these result JSONs, merged")
    args = parser.parse_args(argv)
    if args.report:
        episodes = [e for path in args.report for e in json.loads(path.read_text())["episodes"]]
        report(episodes, args)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    card = load_card()
    games = args.games or card.games
    execute = args.execute or card.play.actions_per_chunk
    rtc = {"rtc_window": args.rtc_window} if args.rtc_window is not None else {}
    if args.rtc_beta is not None:
        rtc["rtc_beta"] = args.rtc_beta
    doc: dict[str, Any] = {"episodes": []}
    if args.out.is_file():
        doc = json.loads(args.out.read_text())  # resume: the episodes already played are kept
    done = {(e["game"], e["mode"], e["latency_ms"], e["seed"]) for e in doc["episodes"]}
    todo = [
        (seed, game, mode, lat)
        for seed in args.seeds
        for game in games
        for mode, lat in cells(args.modes, args.latencies, not args.no_rtc_at_zero)
    ]
    envs = {game: make_env(game) for game in games}
    started = time.perf_counter()
    for n, (seed, game, mode, lat) in enumerate(todo, 1):
        if (game, mode, lat, seed) in done:
            continue
        t0 = time.perf_counter()
        policy = make_policy("default", seed=seed)  # fresh per episode: its noise depends on the seed alone
        row = run_cell(envs[game], policy, mode, lat, seed, args.frames, execute, rtc) | {"game": game}
        policy.close()
        row["wall_s"] = time.perf_counter() - t0
        row["load_1min"] = os.getloadavg()[0]
        doc["episodes"].append(row)
        doc["summary"] = summarize(doc["episodes"], args.latencies)
        doc["settings"] = {
            "frames": args.frames,
            "seeds": args.seeds,
            "latencies_ms": args.latencies,
            "execute": execute,
            **rtc,
            "games": games,
            "threads": args.threads,
        }
        doc["machine"] = machine_info()
        atomic_write_json(args.out, doc)
        print(
            f"[{n}/{len(todo)}] {game} seed {seed} {mode:8s} {lat:5g} ms: score {row['score']:g}, "
            f"{row['chunks']} chunks, {row['compute_ms']:.0f} ms/chunk, {row['wall_s']:.0f} s "
            f"(load {row['load_1min']:.1f}, {time.perf_counter() - started:.0f} s in all)",
            file=sys.stderr,
            flush=True,
        )
    for env in envs.values():
        env.close()
    report(doc["episodes"], args)
    return 0


def report(episodes: list[dict], args: argparse.Namespace) -> None:
    rows = summarize(episodes, args.latencies)
    table = markdown(rows)
    print(table)
    if args.markdown:
        from nitrogen.atomic import atomic_write

        atomic_write(args.markdown, table + "\n")
    if args.plot:
        from nitrogen.rundir.plots import LatencyPoint, latency_chart

        points = [LatencyPoint(r["game"], r["mode"], r["latency_ms"], r["score_mean"], r["score_std"]) for r in rows]
        latency_chart(args.plot, points)


if __name__ == "__main__":
    raise SystemExit(main())
