"""The benchmark harness: policies and agents for N episodes on fixed seeds, one results table.

Each contender plays the same games on the same seeds, through the one episode loop in sync mode,
so a policy's speed does not change its score: a model (in-process checkpoint, server), a replay,
or a random or scripted agent (through the one adapter, one action per frame). The results are
the mean and std of score and episode length, and the policy latency, written as Markdown, JSON and
a PNG bar chart.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..policy import Policy
from .loop import PlayConfig, run_episode
from .sources import as_policy

BASELINES: tuple[str, ...] = ("random", "scripted")
"""Contender names of the reference policies every evaluation can compare against."""


@dataclass
class EpisodeResult:
    env: str
    contender: str
    seed: int
    score: float
    length: int
    latency_ms: float


@dataclass
class Summary:
    env: str
    contender: str
    episodes: int
    score_mean: float
    score_std: float
    length_mean: float
    latency_ms: float
    scores: list[float] = field(default_factory=list)


def run_one(
    env: Any, policy: Policy, seed: int, max_frames: int, actions_per_chunk: int | None = None
) -> tuple[float, int, float]:
    """One episode through the episode loop in sync mode: (score, length, median prediction ms)."""
    config = PlayConfig(mode="sync", max_frames=max_frames, video=False, actions_per_chunk=actions_per_chunk)
    stats = run_episode(env, policy, config, seed=seed)
    latency = float(np.median(stats.latencies_ms)) if stats.latencies_ms else 0.0
    return stats.score, stats.frames, latency


def evaluate(
    env_ids: Sequence[str],
    contenders: dict[str, Callable[[Any], Any]],
    seeds: Sequence[int],
    *,
    max_frames: int = 10_000,
    make_env: Callable[[str], Any] | None = None,
    actions_per_chunk: int | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Play every contender on every game and seed, each episode through the one episode loop.

    ``contenders`` maps a name to a factory ``env -> policy`` (a :class:`~nitrogen.policy.Policy`,
    or a frame-by-frame agent, which gets the one adapter); it is called once per game, with that
    game's env. A factory may raise a ``LookupError`` (``KeyError``,
    :class:`~nitrogen.runtime.experts.NoExpertError`) when it has nothing for a game, and that pair is
    skipped. ``actions_per_chunk`` is the policies' receding horizon (see
    :class:`~nitrogen.runtime.loop.PlayConfig`). ``on_episode`` is called after every episode (progress).
    """
    if make_env is None:
        from ..envs import make_env
    results = []
    for env_id in env_ids:
        env = make_env(env_id)
        try:
            for name, factory in contenders.items():
                try:
                    policy = as_policy(factory(env), env)
                except LookupError:
                    continue
                for seed in seeds:
                    score, length, latency = run_one(env, policy, seed, max_frames, actions_per_chunk)
                    results.append(EpisodeResult(env_id, name, seed, score, length, latency))
                    if on_episode is not None:
                        on_episode(results[-1])
        finally:
            env.close()
    return results


def summarize(results: Sequence[EpisodeResult]) -> list[Summary]:
    groups: dict[tuple[str, str], list[EpisodeResult]] = {}
    for r in results:
        groups.setdefault((r.env, r.contender), []).append(r)
    out = []
    for (env, name), rs in groups.items():
        scores = [r.score for r in rs]
        out.append(
            Summary(
                env,
                name,
                len(rs),
                statistics.fmean(scores),
                statistics.pstdev(scores),
                statistics.fmean(r.length for r in rs),
                statistics.fmean(r.latency_ms for r in rs),
                scores,
            )
        )
    return out


def gap_closed(summaries: Sequence[Summary]) -> dict[tuple[str, str], float]:
    """``(env, contender) -> (score - random) / (expert - random)`` for contenders other than the
    baselines, on games where both the ``random`` and ``scripted`` baselines ran and differ."""
    means = {(s.env, s.contender): s.score_mean for s in summaries}
    out = {}
    for s in summaries:
        if s.contender in BASELINES:
            continue
        random, expert = means.get((s.env, "random")), means.get((s.env, "scripted"))
        if random is not None and expert is not None and expert != random:
            out[(s.env, s.contender)] = (s.score_mean - random) / (expert - random)
    return out


def markdown_table(summaries: Sequence[Summary]) -> str:
    """The results as a Markdown table; "gap closed" is :func:`gap_closed` (random 0%, expert 100%)."""
    closed = gap_closed(summaries)
    lines = [
        "| game | policy | episodes | score mean | score std | gap closed | length mean | latency ms |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        gap = closed.get((s.env, s.contender))
        lines.append(
            f"| {s.env} | {s.contender} | {s.episodes} | {s.score_mean:.2f} | {s.score_std:.2f} | "
            f"{'-' if gap is None else f'{gap:.0%}'} | {s.length_mean:.0f} | {s.latency_ms:.1f} |"
        )
    return "\n".join(lines)


def bar_chart(summaries: Sequence[Summary], path: Path, width: int = 900, row_h: int = 36) -> Path:
    """Horizontal bars of mean score (with a std whisker) per game and contender, drawn with OpenCV."""
    height = 60 + row_h * max(len(summaries), 1)
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, "mean score per game and policy (whisker: std)", (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 0, 1)
    lo = min([0.0] + [s.score_mean - s.score_std for s in summaries])
    hi = max([1e-9] + [s.score_mean + s.score_std for s in summaries])
    left, right = 300, width - 20

    def x(v: float) -> int:
        return int(left + (v - lo) / (hi - lo) * (right - left))

    palette = [(66, 133, 244), (219, 68, 55), (244, 160, 0), (15, 157, 88), (171, 71, 188)]
    names = sorted({s.contender for s in summaries})
    for i, s in enumerate(summaries):
        y = 50 + i * row_h
        colour = palette[names.index(s.contender) % len(palette)]
        cv2.putText(img, f"{s.env} / {s.contender}"[:38], (10, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1)
        cv2.rectangle(img, (x(0.0), y + 6), (x(s.score_mean), y + row_h - 8), colour[::-1], -1)
        cv2.line(
            img, (x(s.score_mean - s.score_std), y + row_h // 2), (x(s.score_mean + s.score_std), y + row_h // 2), 0, 1
        )
        cv2.putText(
            img,
            f"{s.score_mean:.1f}",
            (min(x(s.score_mean) + 4, right - 50), y + 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            0,
            1,
        )
    cv2.line(img, (x(0.0), 40), (x(0.0), height - 5), (120, 120, 120), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def write_results(results: Sequence[EpisodeResult], out_dir: Path) -> dict[str, Path]:
    """``results.md``, ``results.json`` (summaries and every episode) and ``results.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize(results)
    (out_dir / "results.md").write_text(markdown_table(summaries) + "\n")
    closed = gap_closed(summaries)
    doc = {
        "summaries": [asdict(s) | {"gap_closed": closed.get((s.env, s.contender))} for s in summaries],
        "episodes": [asdict(r) for r in results],
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2))
    return {
        "markdown": out_dir / "results.md",
        "json": out_dir / "results.json",
        "png": bar_chart(summaries, out_dir / "results.png"),
    }
