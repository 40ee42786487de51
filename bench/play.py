"""Sync vs async play against a slow policy, on a real-time embedded game.

Run from the repository root::

    PYTHONPATH=. python bench/play.py                      # ALE Breakout at 60 fps, 100 ms policy delay
    PYTHONPATH=. python bench/play.py --delay-ms 300 --frames 1200 --env ale:Pong

The policy replays a fixed action (FIRE) with an artificial delay per chunk, so the numbers show
the runtime, not a model. The game is stepped on its own clock in both modes (``realtime=True``),
as a live game would run; in sync mode it is paused while the policy thinks, as the original does.

Columns: game fps (frames the game advanced per wall second; the target is the game's clock),
effective actions/s (model actions actually executed per wall second), stale actions (skipped
because their frame had passed when their chunk arrived), starved frames (no action left to play:
the pad is held neutral), and the policy's latency.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

from nitrogen.actions import BUTTON_INDEX
from nitrogen.atomic import atomic_write_json
from nitrogen.envs import make_env
from nitrogen.runtime.loop import PlayConfig, play
from nitrogen.runtime.sources import DelayedPolicy, ReplayPolicy


def fire_actions(n: int) -> np.ndarray:
    actions = np.zeros((n, 25), np.float32)
    actions[:, 21:] = 0.5
    actions[:, BUTTON_INDEX["SOUTH"]] = 1.0
    return actions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ale:Breakout")
    parser.add_argument("--frames", type=int, default=600, help="game frames per mode")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="artificial policy latency per chunk")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    env = make_env(args.env)
    fps = float(env.fps)
    rows = []
    for mode in ("sync", "async"):
        policy = DelayedPolicy(ReplayPolicy(fire_actions(args.frames + 100)), args.delay_ms / 1e3)
        config = PlayConfig(mode=mode, max_frames=args.frames, realtime=True, video=False, action_shift=0, seed=0)
        [summary] = play(env, policy, config)
        rows.append({"mode": mode, **summary})
    env.close()

    print("## Sync vs async play against a slow policy\n")
    print(f"- env: {args.env} (game clock {fps:g} fps), {args.frames} frames per mode")
    print(f"- policy: replayed FIRE chunks of 18 actions + {args.delay_ms:g} ms delay per chunk")
    print(f"- machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print("| mode | game fps | effective actions/s | executed | stale | starved frames | latency p50 ms | wall s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['real_fps']:.1f} | {r['effective_actions_per_s']:.1f} | {r['executed_actions']} | "
            f"{r['stale_actions']} | {r['starved_frames']} | {r['latency_p50_ms']:.0f} | {r['wall_s']:.2f} |"
        )
    sync, async_ = rows
    print(
        f"\nasync keeps the game at {async_['real_fps'] / fps:.0%} of its clock; sync runs it at "
        f"{sync['real_fps'] / fps:.0%} (the game waits {args.delay_ms:g} ms per 18 frames)."
    )
    if args.json:
        atomic_write_json(args.json, rows, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
