"""The default agent shipped inside the package, and the demo that plays it.

The agent is a small NitroGen-architecture model (preset ``agent-small``) trained from scratch on
scripted-expert play of the embedded Atari games, with ``nitrogen record`` and ``nitrogen finetune``
only. ``recipes/default-agent/train.sh`` rebuilds it; its card (``agent.json``) records the recipe,
seeds, and the evaluation on seeds not used in training.

>>> results = demo("ale:Freeway", max_frames=600, out_dir="runs")     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .atomic import atomic_write_json
from .errors import NitrogenError

ASSET_DIR = Path(__file__).parent / "assets" / "default-agent"
MODEL_FILE = "model.pt"
CARD_FILE = "agent.json"


class MissingAgentError(NitrogenError, FileNotFoundError):
    """The shipped agent's files are not where the package keeps them."""


class PlaySettings(BaseModel):
    """How the agent is meant to be played (what it was evaluated with)."""

    model_config = ConfigDict(extra="forbid")

    actions_per_chunk: int = Field(6, ge=1)
    """Receding horizon: play this many actions of each 18-action chunk, then predict again."""
    max_frames: int = Field(3000, ge=1)
    """Frames per demo episode (50 s of game at 60 fps)."""


class AgentCard(BaseModel):
    """``agent.json``: what the shipped agent is, how it was made, and how well it plays."""

    model_config = ConfigDict(extra="allow")

    name: str = "nitrogen-default-agent"
    preset: str
    games: list[str] = Field(min_length=1)
    play: PlaySettings = Field(default_factory=PlaySettings)
    sha256: str
    """Of ``model.pt``; checked on load."""
    recipe: str
    """The one command that rebuilds the agent."""
    training: dict[str, Any] = Field(default_factory=dict)
    """Record seeds, exploration, fine-tuning config, steps, wall time."""
    evaluation: dict[str, Any] = Field(default_factory=dict)
    """Seeds, frame budget and per-game scores of agent, random policy and scripted expert."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def agent_dir() -> Path:
    """Where the agent lives: ``$NITROGEN_AGENT_DIR`` if set, else inside the package."""
    override = os.environ.get("NITROGEN_AGENT_DIR")
    return Path(override) if override else ASSET_DIR


def load_card(directory: Path | None = None, *, verify: bool = True) -> AgentCard:
    """Read and validate the agent card; with ``verify``, check the model file's hash against it."""
    directory = directory or agent_dir()
    card_path, model_path = directory / CARD_FILE, directory / MODEL_FILE
    for path in (card_path, model_path):
        if not path.is_file():
            raise MissingAgentError(
                f"the default agent is missing {path}; rebuild it with `bash recipes/default-agent/train.sh`"
            )
    card = AgentCard.model_validate_json(card_path.read_text())
    if verify:
        actual = file_sha256(model_path)
        if actual != card.sha256:
            raise MissingAgentError(f"{model_path} has sha256 {actual}, but {card_path} expects {card.sha256}")
    return card


def agent_path(directory: Path | None = None) -> Path:
    """The shipped agent's checkpoint (released ``.pt`` format), after checking it is there."""
    directory = directory or agent_dir()
    load_card(directory, verify=False)
    return directory / MODEL_FILE


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
