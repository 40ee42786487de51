"""The shipped default agent's files and its card (``agent.json``): what it is, how it was made,
how well it plays. The demo that plays it is :mod:`nitrogen.default_agent`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import NitrogenError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-agent"
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
