"""Which Atari games would make a good second game for the default agent?

A game suits behaviour cloning when an expert is far better than random, the expert's lead does not
vanish when some of its decisions go wrong (a clone gets some wrong), and no single held action
already plays as well. This bench measures those, with no scripted expert needed: the expert is the
generic planner (:class:`nitrogen.runtime.experts.LookaheadExpert` over all the game's actions, reward and
lost lives only, the game's own action order as the tie-break) deciding every ``--hold`` frames,
as a clone playing ``--hold`` actions per chunk would. Per game:

* ``random``: :class:`nitrogen.runtime.agents.RandomAgent`, mean over ``--seeds`` seeds;
* ``best held``: the best of the game's actions held for the whole episode, and its score;
* ``planner``: the planner's score, then the share of its decisions that are its commonest action
  (near 1: it mostly waits, and what a clone must learn is the rare, timed exception);
* ``planner, noise p``: a share ``p`` of its decisions replaced by a random action, mean over seeds.

ALE games are deterministic for a deterministic policy, so the planner and the held actions play one
seed. Run from the repository root (about a minute per game)::

    PYTHONPATH=. python bench/game_survey.py --games Frogger,Phoenix,Asterix --noise 0.1,0.2
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import numpy as np
from expert_hold import score  # bench/expert_hold.py: one episode's total reward
from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.envs import make_env
from nitrogen.runtime.agents import RandomAgent
from nitrogen.runtime.experts import LookaheadExpert


class Planner(LookaheadExpert):
    """The generic planner over ``actions``; a share ``noise`` of its decisions is a random action instead."""

    name = "planner"

    def __init__(self, seed: int, actions: tuple[str, ...], noise: float, hold: int, horizon: int) -> None:
        super().__init__(seed, horizon=horizon, replan_every=hold)
        self.ACTIONS = actions
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.decisions: collections.Counter = collections.Counter()

    def act(self, env: Any, frame: np.ndarray) -> Any:
        deciding = self._left == 0
        state = super().act(env, frame)
        if deciding:
            if self.noise > 0 and self.rng.random() < self.noise:
                self._state = state = env.canonical_state(str(self.rng.choice(env.action_names)))
            self.decisions[env.to_env_action(state)] += 1
        return state


class OneAction:
    """One action, held for the whole episode."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, env: Any, frame: np.ndarray) -> Any:
        return self.state


def survey(game: str, args: argparse.Namespace, noises: list[float]) -> str:
    start = time.perf_counter()
    with make_env(f"ale:{game}", max_episode_frames=args.frames) as env:
        actions = tuple(env.action_names)
        random = np.mean([score(env, RandomAgent(s), s, args.frames) for s in range(args.seeds)])
        held = {a: score(env, OneAction(env.canonical_state(a)), 0, args.frames) for a in actions}
        best = max(held, key=held.__getitem__)
        planner = Planner(0, actions, 0.0, args.hold, args.horizon)
        exact = score(env, planner, 0, args.frames)
        waits = max(planner.decisions.values()) / sum(planner.decisions.values())
        noisy = [
            np.mean(
                [score(env, Planner(s, actions, p, args.hold, args.horizon), s, args.frames) for s in range(args.seeds)]
            )
            for p in noises
        ]
    cells = [game, str(len(actions)), f"{random:.1f}", f"{best} {held[best]:.0f}", f"{exact:.0f}", f"{waits:.2f}"]
    cells += [f"{s:.0f}" for s in noisy] + [f"{time.perf_counter() - start:.0f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", default="Freeway,Boxing,Frogger,Phoenix,Asterix")
    parser.add_argument("--noise", default="0.1,0.2", help="shares of planner decisions replaced by a random action")
    parser.add_argument("--hold", type=int, default=3, help="frames each planner decision is held (K)")
    parser.add_argument("--horizon", type=int, default=32, help="frames each planner rollout looks ahead")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for random play and for each noise level")
    parser.add_argument("--frames", type=int, default=3000, help="frames per episode (the default agent's eval)")
    args = parser.parse_args()
    noises = [float(p) for p in args.noise.split(",") if p]

    print(
        f"# planner (horizon {args.horizon}, decides every {args.hold} frames) vs random and held actions; "
        f"{args.frames} frames per episode"
    )
    for key, value in machine_info().items():
        print(f"# {key}: {value}")
    head = ["game", "actions", "random", "best held", "planner", "commonest decision"]
    head += [f"planner, noise {p:g}" for p in noises] + ["seconds"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "--:|" * (len(head) - 1))
    for game in args.games.split(","):
        print(survey(game.strip(), args, noises), flush=True)


if __name__ == "__main__":
    main()
