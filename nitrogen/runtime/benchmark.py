"""The benchmark harness: policies and agents for N episodes on fixed seeds, one results table.

Each contender plays the same games on the same seeds, through the one episode loop in sync mode,
so a policy's speed does not change its score: a model (in-process checkpoint, server), a replay,
or a random or scripted agent (through the one adapter, one action per frame). The results are
the mean and std of score and episode length, and the policy latency, written as Markdown, JSON and
a PNG bar chart. Every episode and summary also carries ``button_press_rate``: per button, the share
of played frames it was pressed on (:class:`~nitrogen.gamepad.PressCounter`; menu buttons are masked
in play, so START, GUIDE and BACK read 0), to compare with a dataset's known marginals.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..gamepad import PressCounter
from ..policy import Policy
from .loop import Observer, PlayConfig, Step, run_episode
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
    button_press_rate: dict[str, float] = field(default_factory=dict)


class PressRateObserver(Observer):
    """Counts the buttons of every played frame (the policy's choice for it) into :attr:`counter`."""

    def __init__(self) -> None:
        self.counter = PressCounter()

    def on_step(self, step: Step) -> None:
        self.counter.add(step.action)


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
    button_press_rate: dict[str, float] = field(default_factory=dict)


def run_one(
    env: Any,
    policy: Policy,
    seed: int,
    max_frames: int,
    actions_per_chunk: int | None = None,
    mode: Literal["sync", "async"] = "sync",
    presses: PressCounter | None = None,
    *,
    chunking: Literal["naive", "prefix", "rtc"] | None = None,
    execute: int | None = None,
    latency_ms: float | None = None,
    in_flight: int = 1,
) -> tuple[float, int, float]:
    """One episode through the episode loop (sync by default): (score, length, median prediction ms).

    ``presses``, when given, counts the buttons of every played frame. ``chunking``, ``execute``,
    ``latency_ms`` and ``in_flight`` are those of :class:`~nitrogen.runtime.loop.PlayConfig`.
    """
    config = PlayConfig(
        mode=mode,
        max_frames=max_frames,
        video=False,
        actions_per_chunk=actions_per_chunk,
        chunking=chunking,
        execute=execute,
        latency_ms=latency_ms,
        in_flight=in_flight,
    )
    observer = PressRateObserver()
    stats = run_episode(env, policy, config, [observer], seed=seed)
    if presses is not None:
        presses.merge(observer.counter)
    latency = float(np.median(stats.latencies_ms)) if stats.latencies_ms else 0.0
    return stats.score, stats.frames, latency


def run_benchmark(
    env_ids: Sequence[str],
    contenders: dict[str, Callable[[Any], Any]],
    seeds: Sequence[int],
    *,
    max_frames: int = 10_000,
    make_env: Callable[[str], Any] | None = None,
    actions_per_chunk: int | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    mode: Literal["sync", "async"] = "sync",
    chunking: Literal["naive", "prefix", "rtc"] | None = None,
    execute: int | None = None,
    latency_ms: float | None = None,
    in_flight: int = 1,
) -> list[EpisodeResult]:
    """Play every contender on every game and seed, each episode through the one episode loop.

    ``contenders`` maps a name to a factory ``env -> policy`` (a :class:`~nitrogen.policy.Policy`,
    or a frame-by-frame agent, which gets the one adapter); it is called once per game, with that
    game's env. A factory may raise a ``LookupError`` (``KeyError``,
    :class:`~nitrogen.runtime.experts.NoExpertError`) when it has nothing for a game, and that pair is
    skipped. ``actions_per_chunk`` is the policies' receding horizon (see
    :class:`~nitrogen.runtime.loop.PlayConfig`). ``on_episode`` is called after every episode (progress).
    ``mode="async"`` plays on the game's clock while the policy thinks, so a slow policy scores what
    it would score live; the default, sync, scores the policy alone. ``chunking``, ``execute``,
    ``latency_ms`` (simulated latency) and ``in_flight`` are those of
    :class:`~nitrogen.runtime.loop.PlayConfig`.
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
                    presses = PressCounter()
                    score, length, latency = run_one(
                        env,
                        policy,
                        seed,
                        max_frames,
                        actions_per_chunk,
                        mode,
                        presses=presses,
                        chunking=chunking,
                        execute=execute,
                        latency_ms=latency_ms,
                        in_flight=in_flight,
                    )
                    results.append(EpisodeResult(env_id, name, seed, score, length, latency, presses.rates()))
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
        frames = sum(r.length for r in rs if r.button_press_rate)
        rates = {  # over all the group's frames: episodes weighted by their length
            b: sum(r.button_press_rate[b] * r.length for r in rs if r.button_press_rate) / frames
            for b in (rs[0].button_press_rate if frames else {})
        }
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
                {b: round(v, 6) for b, v in rates.items()},
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


def bar_chart(summaries: Sequence[Summary], path: Path, width: int | None = None, row_h: int = 36) -> Path:
    """The evaluation chart of ``summaries`` (:func:`nitrogen.rundir.plots.eval_chart`): one panel per
    game on its own scale and a gap-closed panel, policies labelled by
    :func:`~nitrogen.runtime.sources.policy_labels`. ``width`` is in pixels, ``row_h`` pixels per bar."""
    from ..rundir.plots import ScoreRow, eval_chart
    from .sources import policy_labels

    closed = gap_closed(summaries)
    labels = policy_labels(s.contender for s in summaries)
    rows = [
        ScoreRow(s.env, labels[s.contender], s.score_mean, s.score_std, closed.get((s.env, s.contender)))
        for s in summaries
    ]
    return eval_chart(path, rows, width=width, row_height=row_h)


def write_results(
    results: Sequence[EpisodeResult], out_dir: Path, policies: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Path]:
    """``results.md``, ``results.json`` (summaries, with their chart label, every episode and, when
    given, each model's summary under ``policies``: its checkpoint, Euler steps, ...) and
    ``results.png`` (:func:`bar_chart`), each written atomically: a reader of an earlier evaluation
    in ``out_dir`` sees the old file or the new one, never a torn one."""
    from ..atomic import atomic_write, atomic_write_json
    from .sources import policy_labels

    out_dir = Path(out_dir)
    summaries = summarize(results)
    closed = gap_closed(summaries)
    labels = policy_labels(s.contender for s in summaries)
    doc = {
        "summaries": [
            asdict(s) | {"gap_closed": closed.get((s.env, s.contender)), "label": labels[s.contender]}
            for s in summaries
        ],
        "episodes": [asdict(r) for r in results],
    }
    if policies:
        doc["policies"] = {spec: dict(info) for spec, info in policies.items()}
    return {
        "markdown": atomic_write(out_dir / "results.md", markdown_table(summaries) + "\n"),
        "json": atomic_write_json(out_dir / "results.json", doc),
        "png": bar_chart(summaries, out_dir / "results.png"),
    }
