"""The default agent shipped in the package: what it is, that it loads, and that it plays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from nitrogen.cli import app
from nitrogen.default_agent import (
    ASSET_DIR,
    CARD_FILE,
    MODEL_FILE,
    MissingAgentError,
    agent_path,
    demo,
    load_card,
)
from nitrogen.model.checkpoint import read_checkpoint
from nitrogen.model.presets import preset_config
from nitrogen.runtime.experts import EXPERTS

runner = CliRunner()


def test_shipped_agent_is_small_in_the_released_format_and_matches_its_card():
    card = load_card()  # also checks model.pt against the card's sha256
    path = agent_path()
    assert path.parent == ASSET_DIR and path.stat().st_size <= 40e6
    raw = read_checkpoint(path)  # weights_only=True, exactly as ng.pt is read
    assert raw.config.model_cfg == preset_config(card.preset).model_cfg
    assert set(card.games) <= set(EXPERTS) and len(card.games) >= 2
    assert card.training["final_step"] == card.training["finetune_config"]["max_steps"]
    train_seeds = {s for rec in card.training["recordings"] for s in rec["seeds"]}
    assert train_seeds.isdisjoint(card.evaluation["seeds"])  # evaluated on seeds training never saw
    verdicts = []
    for row in card.evaluation["results"]:
        gap = row["expert"] - row["random"]
        assert row["gap_closed"] == pytest.approx((row["agent"] - row["random"]) / gap)
        verdicts.append(row["agent"] - row["random"] >= 0.4 * gap)  # the bar, from the recorded scores
        assert row["passed"] == verdicts[-1], row
    assert card.evaluation["passed"] == all(verdicts)


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_the_shipped_agent_plays_a_short_episode(tmp_path):
    [result] = demo("ale:Freeway", max_frames=90, seed=7, out_dir=tmp_path)
    assert result.frames == 90 and result.seed == 7
    run_dir = Path(result.run_dir)
    assert _frames(run_dir / "clean.mp4") == 90
    episode = json.loads((run_dir / "episode.json").read_text())
    per_chunk = load_card().play.actions_per_chunk
    assert episode["score"] == result.agent_score and episode["chunks"] == -(-90 // per_chunk)
    assert isinstance(result.random_score, float)


def test_demo_command_prints_the_comparison_and_play_alone_runs_it(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--game", "ale:Gopher", "--max-frames", "48", "--out", str(out), "--expert"])
    assert result.exit_code == 0, result.output
    assert "random" in result.output and "expert" in result.output
    doc = json.loads((out / "demo.json").read_text())
    [episode] = doc["episodes"]
    assert episode["game"] == "ale:Gopher" and episode["frames"] == 48 and episode["expert_score"] is not None
    assert set(doc["means"]) == {"ale:Gopher"}

    result = runner.invoke(app, ["play", "--max-frames", "30", "--out", str(tmp_path / "play"), "--no-video"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "play" / "demo.json").read_text())
    assert {e["game"] for e in doc["episodes"]} == set(load_card().games)

    result = runner.invoke(app, ["demo", "--game", "ale:Seaquest", "--out", str(out)])
    assert result.exit_code != 0 and "ale:Seaquest" in result.output


def test_a_missing_or_altered_agent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NITROGEN_AGENT_DIR", str(tmp_path))
    with pytest.raises(MissingAgentError, match="train.sh"):
        load_card()
    shutil.copyfile(ASSET_DIR / CARD_FILE, tmp_path / CARD_FILE)
    with open(tmp_path / MODEL_FILE, "wb") as f:
        f.write(b"not the agent")
    with pytest.raises(MissingAgentError, match="sha256"):
        load_card()
    result = runner.invoke(app, ["demo", "--max-frames", "10"])
    assert result.exit_code != 0 and "sha256" in result.output
