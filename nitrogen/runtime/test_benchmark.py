import json

import cv2
import numpy as np
import pytest

from nitrogen import InferenceSession
from nitrogen.gamepad import GamepadState
from nitrogen.runtime.benchmark import run_benchmark, write_results


class FireAndRight:
    """A deterministic agent: fire, then hold right."""

    name = "fire-right"

    def reset(self, env, seed=None):
        self.t = 0

    def act(self, env, frame):
        self.t += 1
        return GamepadState(buttons=frozenset({"SOUTH"} if self.t % 10 == 1 else {"DPAD_RIGHT"}))


def test_eval_table_for_a_tiny_checkpoint_and_an_agent(tiny_ckpt, tmp_path):
    policy = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=0)
    contenders = {
        "tiny": lambda env: policy,
        "fire-right": lambda env: FireAndRight(),
        "expert": lambda env: (_ for _ in ()).throw(KeyError(env.spec_id)),  # nothing for this game
    }
    results = run_benchmark(["ale:Breakout"], contenders, seeds=[0, 1], max_frames=90)
    assert sorted({r.contender for r in results}) == ["fire-right", "tiny"]
    assert all(0 < r.length <= 90 for r in results) and len(results) == 4
    again = run_benchmark(["ale:Breakout"], {"fire-right": contenders["fire-right"]}, seeds=[0, 1], max_frames=90)
    assert [r.score for r in again] == [r.score for r in results if r.contender == "fire-right"]
    paths = write_results(results, tmp_path / "eval")
    doc = json.loads(paths["json"].read_text())
    for summary in doc["summaries"]:
        episodes = [e["score"] for e in doc["episodes"] if e["contender"] == summary["contender"]]
        assert summary["episodes"] == 2 and np.isclose(summary["score_mean"], np.mean(episodes))
    table = paths["markdown"].read_text()
    assert "| ale:Breakout | tiny | 2 |" in table and "fire-right" in table
    image = cv2.imread(str(paths["png"]))
    assert image is not None and image.shape[0] > 100
    assert next(s for s in doc["summaries"] if s["contender"] == "tiny")["latency_ms"] > 0


def test_gap_closed_puts_random_at_0_and_the_expert_at_100_percent():
    from nitrogen.runtime.benchmark import EpisodeResult, gap_closed, markdown_table, summarize

    results = [
        EpisodeResult("g", "random", 0, -20.0, 100, 0.0),
        EpisodeResult("g", "scripted", 0, 0.0, 100, 0.0),
        EpisodeResult("g", "ckpt:a", 0, -10.0, 100, 5.0),
        EpisodeResult("g", "ckpt:a", 1, -4.0, 100, 5.0),
        EpisodeResult("h", "ckpt:a", 0, 3.0, 100, 5.0),  # no baselines on this game
    ]
    summaries = summarize(results)
    closed = gap_closed(summaries)
    assert closed == {("g", "ckpt:a"): pytest.approx((-7.0 + 20.0) / 20.0)}
    table = markdown_table(summaries)
    assert "| g | ckpt:a | 2 | -7.00 | 3.00 | 65% |" in table
    assert "| h | ckpt:a | 1 | 3.00 | 0.00 | - |" in table


def test_a_game_without_a_scripted_expert_is_evaluated_without_that_baseline():
    from nitrogen.runtime.agents import make_agent
    from nitrogen.runtime.experts import NoExpertError

    contenders = {name: (lambda env, n=name: make_agent(n, env.spec_id, 0)) for name in ("random", "scripted")}
    with pytest.raises(NoExpertError):
        make_agent("scripted", "ale:Tennis", 0)
    results = run_benchmark(["ale:Tennis", "ale:Pong"], contenders, seeds=[0], max_frames=30)
    assert [(r.env, r.contender) for r in results] == [
        ("ale:Tennis", "random"),
        ("ale:Pong", "random"),
        ("ale:Pong", "scripted"),
    ]


def test_write_results_rewrites_atomically_with_readable_labels(tmp_path):
    from nitrogen.default_agent import ASSET_DIR, CARD_FILE
    from nitrogen.runtime.benchmark import EpisodeResult

    card_dir = tmp_path / "agent"
    card_dir.mkdir()
    (card_dir / CARD_FILE).write_text((ASSET_DIR / CARD_FILE).read_text())
    agent = f"ckpt:{tmp_path}/runs/x/model.pt"
    carded = f"ckpt:{card_dir}/model.pt"
    scores = {
        "ale:Freeway": {agent: 8, carded: 10, "random": 0, "scripted": 12},
        "ale:Gopher": {agent: 438, carded: 500, "random": 202, "scripted": 520},
    }
    results = [
        EpisodeResult(game, name, seed, score, 100, 1.0)
        for game, by_policy in scores.items()
        for name, score in by_policy.items()
        for seed in (0, 1)
    ]
    out = tmp_path / "eval"
    write_results(results[:4], out)  # an earlier, smaller evaluation in the same folder
    paths = write_results(results, out)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]  # no temp left
    doc = json.loads(paths["json"].read_text())
    assert len(doc["episodes"]) == len(results)
    labels = {s["contender"]: s["label"] for s in doc["summaries"]}
    assert labels == {agent: "x/model.pt", carded: "nitrogen-default-agent", "random": "random", "scripted": "scripted"}
    assert "| ale:Gopher |" in paths["markdown"].read_text()
    image = cv2.imread(str(paths["png"]))
    assert image is not None and image.shape[1] == 3 * 360  # Freeway, Gopher, gap closed


def test_eval_reports_per_button_press_rates_per_episode_and_summary(tmp_path):
    results = run_benchmark(["ale:Breakout"], {"fire-right": lambda env: FireAndRight()}, seeds=[0], max_frames=50)
    (episode,) = results
    rates = episode.button_press_rate
    # FireAndRight presses SOUTH on frames 1, 11, 21, ... and DPAD_RIGHT on the others.
    assert rates["SOUTH"] == pytest.approx(5 / 50) and rates["DPAD_RIGHT"] == pytest.approx(45 / 50)
    assert rates["GUIDE"] == 0.0 and len(rates) == 21
    doc = json.loads(write_results(results, tmp_path / "eval")["json"].read_text())
    assert doc["episodes"][0]["button_press_rate"] == rates
    assert doc["summaries"][0]["button_press_rate"]["SOUTH"] == pytest.approx(0.1)
