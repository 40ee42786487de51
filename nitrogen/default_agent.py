"""The default agent shipped inside the package, and the demo that plays it.

The agent is a small NitroGen-architecture model (preset ``agent-small``) trained from scratch on
scripted-expert play of the embedded Atari games, with ``nitrogen record`` and ``nitrogen finetune``
only. ``recipes/default-agent/train.sh`` rebuilds it; its card (``agent.json``) records the recipe,
seeds, and the evaluation on seeds not used in training.

>>> results = demo("ale:Freeway", max_frames=600, out_dir="runs")     # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import atomic_write_json
from .model.card import (  # noqa: F401 - the card's names, where the demo's users import them
    ASSET_DIR,
    CARD_FILE,
    MODEL_FILE,
    AgentCard,
    MissingAgentError,
    PlaySettings,
    agent_dir,
    agent_path,
    file_sha256,
    load_card,
)


@dataclass
class DemoResult:
    game: str
    seed: int
    frames: int
    agent_score: float
    random_score: float
    expert_score: float | None
    run_dir: str | None


def demo(
    game: str | None = None,
    *,
    episodes: int = 1,
    max_frames: int | None = None,
    seed: int = 1000,
    out_dir: str | os.PathLike[str] | None = "runs",
    video: bool = True,
    expert: bool = False,
    progress: bool = False,
    directory: Path | None = None,
) -> list[DemoResult]:
    """Play the shipped agent on ``game`` (default: every game it was trained on).

    Each episode is recorded (videos, ``actions.jsonl``, ``episode.json``) under ``out_dir``, then
    the random policy (and, with ``expert``, the scripted expert) plays the same seed for the same
    number of frames, so the scores compare like for like.
    """
    from .envs import make_env
    from .runtime.benchmark import run_one
    from .runtime.experts import NoExpertError
    from .runtime.loop import PlayConfig, play
    from .runtime.sources import make_policy

    directory = directory or agent_dir()
    card = load_card(directory)
    games = [game] if game else card.games
    frames = max_frames or card.play.max_frames
    agent = make_policy(f"ckpt:{directory / MODEL_FILE}", seed=seed)
    config = PlayConfig(
        mode="sync",
        max_frames=frames,
        episodes=episodes,
        seed=seed,
        actions_per_chunk=card.play.actions_per_chunk,
        video=video,
    )
    results = []
    for name in games:
        with make_env(name) as env:
            summaries = play(env, agent, config, out_dir=Path(out_dir) if out_dir else None, progress=progress)
            for summary in summaries:
                ep_seed = int(summary["seed"])
                length = int(summary["frames"])
                random_score = run_one(env, make_policy("random", env=env, seed=ep_seed), ep_seed, length)[0]
                expert_score = None
                if expert:
                    try:
                        scripted = make_policy("scripted", env=env, seed=ep_seed)
                    except NoExpertError:
                        scripted = None  # no scripted expert for this game
                    if scripted is not None:
                        expert_score = run_one(env, scripted, ep_seed, length)[0]
                results.append(
                    DemoResult(
                        game=name,
                        seed=ep_seed,
                        frames=length,
                        agent_score=float(summary["score"]),
                        random_score=float(random_score),
                        expert_score=expert_score,
                        run_dir=summary.get("run_dir"),
                    )
                )
    agent.close()
    return results


def write_demo_summary(results: list[DemoResult], path: Path) -> Path:
    """The demo's results as JSON, with per-game means."""
    games: dict[str, list[DemoResult]] = {}
    for r in results:
        games.setdefault(r.game, []).append(r)
    means = {
        g: {
            "agent": statistics.fmean(r.agent_score for r in rs),
            "random": statistics.fmean(r.random_score for r in rs),
        }
        for g, rs in games.items()
    }
    return atomic_write_json(path, {"episodes": [asdict(r) for r in results], "means": means})
