"""Does a checkpoint do what the scripted expert would do, frame by frame?

Score alone does not say why a cloned agent fails. This bench plays each game twice per seed and,
on every ``K``-th frame (``--actions-per-chunk``), compares the game action the policy's chunk
starts with against the action the expert would take on that frame:

* ``expert drives``: the expert plays and the policy is only asked. This is the accuracy on the
  frames the policy was trained on (held-out seeds of the same distribution).
* ``policy drives``: the policy plays, as in ``nitrogen eval``, and the expert is only asked. The
  gap to the first row is what the policy's own mistakes lead it into.

Both actions are compared as the ALE action they send (``AtariEnv.to_env_action``). The table gives
the agreement and the most frequent disagreements. Run from the repository root::

    PYTHONPATH=. python bench/imitation.py --ckpt nitrogen/assets/default-agent/model.pt \\
        --games ale:Freeway,ale:Boxing --seeds 0,1 --frames 900
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.envs import make_env
from nitrogen.gamepad import states_from_chunk
from nitrogen.inference.session import InferenceSession
from nitrogen.runtime.agents import make_agent
from nitrogen.runtime.loop import prepare_frame


def compare(
    env: Any, session: InferenceSession, expert: Any, seed: int, frames: int, every: int, policy_drives: bool
) -> tuple[collections.Counter, float]:
    """(Counter of (expert action, policy action) at the decision frames, score) for one episode."""
    frame, _ = env.reset(seed=seed)
    expert.reset(env, seed)
    session.reset()
    pairs: collections.Counter = collections.Counter()
    score, held = 0.0, []
    for t in range(frames):
        wanted = expert.act(env, frame)
        if t % every == 0:
            chunk = states_from_chunk(session.predict(prepare_frame(frame, session.spec)).action_tensor)
            held = chunk[:every]
            pairs[(env.to_env_action(wanted), env.to_env_action(chunk[0]))] += 1
        state = held[t % every] if policy_drives else wanted
        frame, reward, terminated, truncated, _ = env.step(state)
        score += float(reward)
        if terminated or truncated:
            break
    return pairs, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="nitrogen/assets/default-agent/model.pt")
    parser.add_argument("--games", default="ale:Freeway,ale:Boxing")
    parser.add_argument("--seeds", default="0,1", help="seeds not used in training")
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--actions-per-chunk", type=int, default=3)
    parser.add_argument("--top", type=int, default=3, help="most frequent disagreements to list")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    session = InferenceSession.from_checkpoint(args.ckpt, seed=0)

    print(f"# {args.ckpt}: policy vs scripted expert, every {args.actions_per_chunk} frames, seeds {args.seeds}")
    for key, value in machine_info().items():
        print(f"# {key}: {value}")
    print("| game | who plays | decisions | agreement | score | most frequent disagreements (expert -> policy) |")
    print("|---|---|--:|--:|--:|---|")
    for game in args.games.split(","):
        with make_env(game, max_episode_frames=args.frames) as env:
            for policy_drives in (False, True):
                pairs: collections.Counter = collections.Counter()
                scores = []
                for seed in seeds:
                    got, score = compare(
                        env,
                        session,
                        make_agent("scripted", game, seed),
                        seed,
                        args.frames,
                        args.actions_per_chunk,
                        policy_drives,
                    )
                    pairs.update(got)
                    scores.append(score)
                total = sum(pairs.values())
                agree = sum(n for (want, got), n in pairs.items() if want == got) / max(total, 1)
                wrong = [(n, want, got) for (want, got), n in pairs.items() if want != got]
                worst = ", ".join(f"{w} -> {g} ({n})" for n, w, g in sorted(wrong, reverse=True)[: args.top])
                who = "policy drives" if policy_drives else "expert drives"
                mean = sum(scores) / len(scores)
                print(f"| {game} | {who} | {total} | {agree:.2f} | {mean:.1f} | {worst} |", flush=True)


if __name__ == "__main__":
    main()
