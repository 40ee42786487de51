"""How much of a scripted expert's score survives being played the way a cloned policy plays it?

A policy cloned from an expert sees one frame, then plays the first ``K`` actions of the chunk it
predicts before it looks again (``--actions-per-chunk``), and it gets some actions wrong. This
bench plays each expert that way, with the expert standing in for a perfect clone: it decides on
every ``K``-th frame and its decision is held for ``K`` frames, and a fraction ``--noise`` of the
decisions is replaced by a random action (any of the game's actions). With ``--sigma``, the
expert also sees the positions it reads from RAM (its ``POSITION_BYTES``) off by Gaussian noise of
that many pixels, as a clone that locates the sprites only roughly would. Scores are means over
seeds (ALE games are deterministic for a deterministic policy, so the seeds only vary the noise).
The reference row is the expert itself, deciding every frame without noise.

This is how the default agent's Boxing expert and its ``actions_per_chunk`` were chosen
(docs/BENCHMARKS.md, "The default agent"). Run from the repository root::

    PYTHONPATH=. python bench/expert_hold.py --game ale:Boxing --holds 1,2,3,6 --noise 0,0.05
    PYTHONPATH=. python bench/expert_hold.py --game ale:Boxing --holds 3 --noise 0 --sigma 0,1,2,4,8
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import numpy as np
from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.envs import make_env
from nitrogen.runtime.agents import make_agent
from nitrogen.runtime.experts import EXPERTS


class Blurred:
    """``env`` as the expert sees it: its RAM position bytes off by N(0, ``sigma``) pixels."""

    def __init__(self, env: Any, positions: tuple[int, ...], sigma: float, rng: np.random.Generator) -> None:
        self.env, self.positions, self.sigma, self.rng = env, list(positions), sigma, rng

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def ram(self) -> np.ndarray:
        ram = np.asarray(self.env.ram()).astype(np.float64)
        ram[self.positions] += self.rng.normal(0.0, self.sigma, len(self.positions))
        return np.clip(np.rint(ram), 0, 255).astype(np.uint8)


class Held:
    """``inner`` decides every ``hold`` frames; a ``noise`` share of its decisions is swapped for a random action.

    With ``sigma`` > 0, ``inner`` decides on positions blurred by that many pixels (:class:`Blurred`).
    """

    def __init__(self, inner: Any, hold: int, noise: float, seed: int, sigma: float = 0.0) -> None:
        self.inner, self.hold, self.noise, self.sigma = inner, hold, noise, sigma
        self.rng = np.random.default_rng(seed)
        self.left, self.state = 0, None
        if sigma > 0 and not hasattr(inner, "POSITION_BYTES"):
            raise ValueError(f"{type(inner).__name__} names no POSITION_BYTES to blur")

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.inner.reset(env, seed)
        self.left = 0

    def act(self, env: Any, frame: np.ndarray) -> Any:
        if self.left <= 0:
            seen = Blurred(env, self.inner.POSITION_BYTES, self.sigma, self.rng) if self.sigma > 0 else env
            self.state = self.inner.act(seen, frame)
            if self.rng.random() < self.noise:
                self.state = env.canonical_state(str(self.rng.choice(env.action_names)))
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
    parser.add_argument("--sigma", default="0", help="pixels of Gaussian error on the positions the expert reads")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3000)
    args = parser.parse_args()
    holds = [int(k) for k in args.holds.split(",")]
    noises = [float(p) for p in args.noise.split(",")]
    sigmas = [float(x) for x in args.sigma.split(",")]

    print(
        f"# {args.game}: scripted expert held K frames, with noise and blurred positions; "
        f"{args.seeds} seeds x {args.frames} frames"
    )
    for key, value in machine_info().items():
        print(f"# {key}: {value}")
    print("| K (frames held) | noise | sigma (px) | score mean | score std | seconds |")
    print("|--:|--:|--:|--:|--:|--:|")
    with make_env(args.game, max_episode_frames=args.frames) as env:
        for hold, noise, sigma in itertools.product(holds, noises, sigmas):
            start = time.perf_counter()
            # Without noise or blur every seed plays the same game; one is enough.
            seeds = range(args.seeds) if noise > 0 or sigma > 0 else range(1)
            scores = [
                score(env, Held(make_agent("scripted", args.game, s), hold, noise, s, sigma), s, args.frames)
                for s in seeds
            ]
            print(
                f"| {hold} | {noise:g} | {sigma:g} | {np.mean(scores):.1f} | {np.std(scores):.1f} "
                f"| {time.perf_counter() - start:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
