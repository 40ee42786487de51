"""How much of a scripted expert's score survives being played the way a cloned policy plays it?

A policy cloned from an expert sees one frame, then plays the first ``K`` actions of the chunk it
predicts before it looks again (``--actions-per-chunk``), and it gets some actions wrong. This
bench plays each expert that way, with the expert standing in for a perfect clone: it decides on
every ``K``-th frame and its decision is held for ``K`` frames, and a fraction ``--noise`` of the
decisions is replaced by a random action (FIRE, a direction or nothing). Scores are means over
seeds (ALE games are deterministic for a deterministic policy, so the seeds only vary the noise).
The reference row is the expert itself, deciding every frame without noise.

This is how the default agent's Boxing expert and its ``actions_per_chunk`` were chosen
(docs/BENCHMARKS.md, "The default agent"). Run from the repository root::

    PYTHONPATH=. python bench/expert_hold.py --game ale:Boxing --holds 1,2,3,6 --noise 0,0.05
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.envs import make_env
from nitrogen.experts import EXPERTS, make_agent

RANDOM_ACTIONS = ("FIRE", "UP", "DOWN", "LEFT", "RIGHT", "NOOP")


class Held:
    """``inner`` decides every ``hold`` frames; a ``noise`` share of its decisions is swapped for a random action."""

    def __init__(self, inner: Any, hold: int, noise: float, seed: int) -> None:
        self.inner, self.hold, self.noise = inner, hold, noise
        self.rng = np.random.default_rng(seed)
        self.left, self.state = 0, None

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.inner.reset(env, seed)
        self.left = 0

    def act(self, env: Any, frame: np.ndarray) -> Any:
        if self.left <= 0:
            self.state = self.inner.act(env, frame)
            if self.rng.random() < self.noise:
                self.state = env.canonical_state(str(self.rng.choice(RANDOM_ACTIONS)))
            self.left = self.hold
        self.left -= 1
        return self.state


def score(env: Any, agent: Any, seed: int, frames: int) -> float:
    frame, _ = env.reset(seed=seed)
    agent.reset(env, seed)
    total = 0.0
    for _ in range(frames):
        frame, reward, terminated, truncated, _ = env.step(agent.act(env, frame))
        total += float(reward)
        if terminated or truncated:
            break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", default="ale:Boxing", choices=sorted(EXPERTS))
    parser.add_argument("--holds", default="1,2,3,6", help="frames each decision is held (K)")
    parser.add_argument("--noise", default="0,0.05", help="shares of decisions replaced by a random action")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3000)
    args = parser.parse_args()
    holds = [int(k) for k in args.holds.split(",")]
    noises = [float(p) for p in args.noise.split(",")]

    print(f"# {args.game}: scripted expert held K frames, with noise; {args.seeds} seeds x {args.frames} frames")
    for key, value in machine_info().items():
        print(f"# {key}: {value}")
    print("| K (frames held) | noise | score mean | score std | seconds |")
    print("|--:|--:|--:|--:|--:|")
    with make_env(args.game, max_episode_frames=args.frames) as env:
        for hold in holds:
            for noise in noises:
                start = time.perf_counter()
                # Without noise every seed plays the same game; one is enough.
                seeds = range(args.seeds) if noise > 0 else range(1)
                scores = [
                    score(env, Held(make_agent("scripted", args.game, s), hold, noise, s), s, args.frames)
                    for s in seeds
                ]
                print(
                    f"| {hold} | {noise:g} | {np.mean(scores):.1f} | {np.std(scores):.1f} "
                    f"| {time.perf_counter() - start:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
