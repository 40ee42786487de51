"""Tests for nitrogen.runtime.sources: one factory for every policy source, all driven by the one loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from nitrogen.envs import make_env
from nitrogen.model.card import ASSET_DIR, CARD_FILE, AgentCard
from nitrogen.policy import Policy
from nitrogen.runtime.experts import NoExpertError
from nitrogen.runtime.loop import PlayConfig, run_episode
from nitrogen.runtime.sources import (
    AgentPolicy,
    ReplayPolicy,
    as_policy,
    has_policy_for,
    make_policy,
    policy_label,
    policy_labels,
    read_actions,
)
from nitrogen.serving.client import ModelClient
from nitrogen.serving.server import InferenceServer, ServerConfig


class _Seen:
    """Delegates to a policy and remembers the shape of every frame it was given."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.shapes = policy, []

    @property
    def spec(self):
        return self.policy.spec

    def predict(self, frame):
        self.shapes.append(frame.shape)
        return self.policy.predict(frame)

    def reset(self) -> None:
        self.policy.reset()

    def info(self):
        return self.policy.info()

    def close(self) -> None:
        self.policy.close()


@pytest.fixture()
def breakout():
    with make_env("ale:Breakout") as env:
        yield env


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_play_squashes_frames_to_the_checkpoints_tower_once(breakout, tiny_ckpt_224, mode):
    """A 224-pixel tower is given 224x224 frames, in process and through a server."""
    local = make_policy(f"ckpt:{tiny_ckpt_224}", seed=0)
    assert local.spec.image_size == 224 and local.spec.kind == "model"
    seen = _Seen(local)
    config = PlayConfig(mode=mode, max_frames=40, video=False, fps=600.0)
    stats = run_episode(breakout, seen, config, seed=0)
    assert stats.frames == 40 and seen.shapes and set(seen.shapes) == {(224, 224, 3)}
    from nitrogen.inference.engine import PolicyEngine

    engine = PolicyEngine.from_checkpoint(tiny_ckpt_224, device="cpu")
    with InferenceServer(engine, ServerConfig(port=0)) as server:
        remote = make_policy(f"server:{server.address}")
        assert isinstance(remote, ModelClient) and remote.spec.image_size == 224
        seen = _Seen(remote)
        run_episode(breakout, seen, config, seed=0)
        remote.close()
    assert seen.shapes and set(seen.shapes) == {(224, 224, 3)}


def test_agents_are_policies_through_one_adapter(breakout):
    random = make_policy("random", env=breakout, seed=4)
    assert isinstance(random, AgentPolicy) and isinstance(random, Policy)
    assert random.spec.kind == "random" and random.spec.action_horizon == 1 and random.spec.image_size is None
    scripted = make_policy("scripted", env=breakout, seed=0)
    assert scripted.spec.name == "scripted-breakout"
    config = PlayConfig(mode="sync", max_frames=200, video=False)
    first = run_episode(breakout, random, config, seed=7)
    again = run_episode(breakout, random, config, seed=7)  # the agent is re-seeded with the episode
    assert first.frames == again.frames == 200 and first.chunks == 200 and first.score == again.score
    with make_env("ale:Tennis") as tennis, pytest.raises(NoExpertError):
        make_policy("scripted", env=tennis)
    assert not has_policy_for("scripted", "ale:Tennis") and has_policy_for("scripted", "ale:breakout")
    with pytest.raises(ValueError, match="needs the env"):
        make_policy("random")
    with pytest.raises(ValueError, match="ckpt: needs a path"):
        make_policy("ckpt")
    with pytest.raises(ValueError, match="unknown policy 'bogus:x'.*ckpt:PATH"):
        make_policy("bogus:x")
    with pytest.raises(TypeError, match="neither a Policy"):
        as_policy(object(), breakout)


def test_the_default_source_is_the_shipped_agent():
    policy = make_policy("default", seed=0)
    assert policy.spec.kind == "model" and policy.spec.action_shift == 0 and policy.spec.image_size == 256
    policy.close()


def test_replay_names_a_bad_line(tmp_path):
    path = tmp_path / "actions.jsonl"
    path.write_text('{"state": {"buttons": ["SOUTH"]}}\n{"action": [0.5, 1]}\n')
    with pytest.raises(ValueError, match=r"actions.jsonl:2: 'action' must be 25 finite numbers"):
        read_actions(path)
    path.write_text('{"state": {"buttons": ["SOUTH"]}}\nnot json\n')
    with pytest.raises(ValueError, match=r"actions.jsonl:2: not a JSON line"):
        read_actions(tmp_path)
    path.write_text('{"state": {"buttons": ["BOGUS"]}}\n')
    with pytest.raises(ValueError, match=r"actions.jsonl:1: unknown or non-pad buttons"):
        ReplayPolicy(path)
    path.write_text('{"frame": 3}\n')
    with pytest.raises(ValueError, match=r"actions.jsonl:1: no pad 'state'"):
        make_policy(f"replay:{path}")
    path.write_text('{"state": {"buttons": ["SOUTH"], "left_stick": [0.25, -1.0]}}\n')
    [vector] = read_actions(path)
    assert vector[18] == 1.0 and np.allclose(vector[21:23], [0.625, 0.0])


def test_policy_labels_are_readable(tmp_path: Path) -> None:
    assert policy_label("ckpt:/a/b/runs/x/model.pt") == "x/model.pt"
    assert policy_label("ckpt:model.pt") == "model.pt"
    assert policy_label("replay:/data/run-3/actions.jsonl") == "replay:actions.jsonl"
    for spec in ("random", "scripted", "server:tcp://127.0.0.1:5555"):
        assert policy_label(spec) == spec
    # A checkpoint with an agent card beside it shows the card's name.
    agent = tmp_path / "agent"
    agent.mkdir()
    shutil.copy(ASSET_DIR / CARD_FILE, agent / CARD_FILE)
    name = AgentCard.model_validate_json((ASSET_DIR / CARD_FILE).read_text()).name
    assert policy_label(f"ckpt:{agent / 'model.pt'}") == name == "nitrogen-default-agent"
    # A file of that name that is not a card: the path label.
    other = tmp_path / "other"
    other.mkdir()
    (other / CARD_FILE).write_text('{"not": "a card"}')
    assert policy_label(f"ckpt:{other / 'best.pt'}") == "other/best.pt"


def test_policy_labels_keep_the_spec_where_labels_would_collide() -> None:
    specs = ["ckpt:/a/runs/x/model.pt", "ckpt:/b/runs/x/model.pt", "ckpt:/c/y/model.pt", "random", "random"]
    assert policy_labels(specs) == {
        "ckpt:/a/runs/x/model.pt": "ckpt:/a/runs/x/model.pt",
        "ckpt:/b/runs/x/model.pt": "ckpt:/b/runs/x/model.pt",
        "ckpt:/c/y/model.pt": "y/model.pt",
        "random": "random",
    }
