"""The plots of the project, drawn with matplotlib: training curves and the evaluation chart.

* :func:`plot_curves` (:func:`curves_figure`): train and eval loss against the step
  (``curves.png`` of a training run).
* :func:`eval_chart` (:func:`eval_figure`): one panel per game on its own score scale, and a "gap closed" panel where
  every game is normalised to random = 0 and expert = 1 (``results.png`` of ``nitrogen eval``).
  It takes plain :class:`ScoreRow` data, so it knows nothing of the benchmark harness.
* :func:`dagger_chart` (:func:`dagger_figure`): score (mean, std whiskers) and agreement with the
  expert in the agent's own states against the round (``dagger.png`` of ``nitrogen dagger``).
* :func:`latency_chart` (:func:`latency_figure`): score against latency, one panel per game and one
  line per play mode (``docs/bench_latency.png`` of ``bench/latency.py``), from :class:`LatencyPoint` data.

Figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas directly, so the
backend is Agg whatever ``pyplot`` is set to, and no global pyplot state (current figure, backend)
is touched. PNGs are written through :func:`nitrogen.atomic.atomic_write`. matplotlib is in the
``train`` and ``play`` extras and is imported when a plot is drawn.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write

__all__ = [
    "LatencyPoint",
    "ScoreRow",
    "curves_figure",
    "dagger_chart",
    "dagger_figure",
    "eval_chart",
    "eval_figure",
    "latency_chart",
    "latency_figure",
    "plot_curves",
]

Series = Sequence[tuple[int, float]]

_DPI = 100
_SMOOTH_MIN_POINTS = 50
_EVAL_TITLE = "mean score per game (whisker: std over episodes)"
_TRAIN_COLOUR, _EVAL_COLOUR = "#1f77b4", "#d62728"
_BASELINE_COLOURS = {"random": "#b0b0b0", "scripted": "#505050"}
_POLICY_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#393b79", "#843c39", "#637939",
)  # fmt: skip


def _new_figure(width_px: int, height_px: int) -> Any:
    """A Figure on its own Agg canvas (no pyplot), ``width_px`` x ``height_px`` at :data:`_DPI`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        from ..envs.base import MissingDependencyError

        raise MissingDependencyError(
            "plots need matplotlib: pip install 'nitrogen[train]' (or 'nitrogen[play]', or 'matplotlib>=3.7,<4')"
        ) from exc
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _moving_average(values: Sequence[float]) -> list[float]:
    """Centred moving average over ~2% of the points (at least 5), shrinking at the ends."""
    half = max(2, len(values) // 100)
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append((sums[hi] - sums[lo]) / (hi - lo))
    return out


def _save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` with its Agg canvas and write the PNG to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------


def plot_curves(
    path: str | os.PathLike[str], train: Series, evals: Series = (), size: tuple[int, int] = (800, 480)
) -> Path:
    """Write :func:`curves_figure` of ``train`` and ``evals`` to ``path`` (PNG, atomically); returns it."""
    return _save_png(curves_figure(train, evals, size), path)


def curves_figure(train: Series, evals: Series = (), size: tuple[int, int] = (800, 480)) -> Any:
    """The figure of train (blue line) and eval (red line with dots) loss vs step (``Figure``).

    ``size`` is ``(width, height)`` in pixels. Non-finite losses are left out. A train series of
    :data:`_SMOOTH_MIN_POINTS` or more points is drawn faint, with its centred moving average over
    about 2% of the points on top. The loss axis is
    logarithmic when every value is positive and they span more than a factor of 10, so the slow
    late part of a run stays readable next to its steep start.
    """
    fig = _new_figure(*size)
    ax = fig.add_subplot()
    values = []
    for series, colour, label, is_eval in (
        (train, _TRAIN_COLOUR, "train loss", False),
        (evals, _EVAL_COLOUR, "eval loss", True),
    ):
        points = [(s, v) for s, v in series if math.isfinite(v)]
        values += [v for _, v in points]
        if not points:
            continue
        steps, losses = zip(*points, strict=True)
        marker = "o" if is_eval or len(points) == 1 else None  # a single point is a dot, not an invisible line
        if not is_eval and len(points) >= _SMOOTH_MIN_POINTS:
            # Noisy per-step losses: the raw curve faint, a moving average on top.
            ax.plot(steps, losses, color=colour, linewidth=0.8, alpha=0.3)
            ax.plot(steps, _moving_average(losses), color=colour, linewidth=1.8, label=f"{label} (moving average)")
        else:
            ax.plot(steps, losses, color=colour, linewidth=1.5, marker=marker, markersize=4, label=label)
    if values and min(values) > 0 and max(values) / min(values) > 10:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("loss (log scale)")
    else:
        ax.set_ylabel("loss")
    ax.set_xlabel("step")
    ax.set_title("training curves")
    ax.grid(True, which="major", alpha=0.3)
    if values:
        ax.legend(loc="upper right")
    return fig


# --------------------------------------------------------------------------------------------------
# Evaluation chart
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreRow:
    """One bar of the evaluation chart: a policy's score on a game."""

    game: str
    policy: str
    """The label shown (see :func:`nitrogen.runtime.sources.policy_label`); ``random`` and ``scripted``
    are the baselines."""
    score_mean: float
    score_std: float = 0.0
    gap_closed: float | None = None
    """``(score - random) / (expert - random)``, or ``None`` (baselines, games without both)."""


def _colours(policies: Sequence[str]) -> dict[str, str]:
    """A fixed colour per policy across all panels: greys for the baselines."""
    out, i = {}, 0
    for policy in policies:
        if policy in _BASELINE_COLOURS:
            out[policy] = _BASELINE_COLOURS[policy]
        else:
            out[policy] = _POLICY_COLOURS[i % len(_POLICY_COLOURS)]
            i += 1
    return out


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def eval_chart(
    path: str | os.PathLike[str],
    rows: Sequence[ScoreRow],
    *,
    title: str = _EVAL_TITLE,
    width: int | None = None,
    row_height: int = 36,
) -> Path:
    """Write :func:`eval_figure` of ``rows`` to ``path`` (PNG, atomically); returns the path."""
    return _save_png(eval_figure(rows, title=title, width=width, row_height=row_height), path)


def eval_figure(
    rows: Sequence[ScoreRow], *, title: str = _EVAL_TITLE, width: int | None = None, row_height: int = 36
) -> Any:
    """The evaluation chart of ``rows`` (a ``Figure``).

    One panel per game, in the order of first appearance, each with its own score axis: a
    horizontal bar per policy at the mean score with a std whisker and the value written beside it.
    When some row has a ``gap_closed`` value, a last "gap closed" panel puts every game on the same
    scale, random = 0 and expert = 1 (dashed lines), with one bar per game and policy. A policy
    keeps its colour in every panel. Panels are laid out three to a row; ``width`` is the figure
    width in pixels (default 360 per panel column), ``row_height`` the pixels per bar.
    """
    games = list(dict.fromkeys(r.game for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r.game, r.policy) in seen:
            raise ValueError(f"two rows for game {r.game!r} and policy {r.policy!r}")
        seen.add((r.game, r.policy))
    gaps = [r for r in rows if r.gap_closed is not None and math.isfinite(r.gap_closed)]
    colours = _colours(policies)

    panels = len(games) + bool(gaps) or 1
    cols = min(3, panels)
    lines = max([sum(r.game == g for r in rows) for g in games] + [len(gaps), 1])
    height = 60 + math.ceil(panels / cols) * (110 + row_height * lines)
    fig = _new_figure(width or 360 * cols, height)
    fig.suptitle(title)
    axes = fig.subplots(math.ceil(panels / cols), cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    if not rows:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()

    for ax, game in zip(axes, games, strict=False):
        game_rows = [r for r in rows if r.game == game]
        _bars(
            ax,
            [r.policy for r in game_rows],
            [r.score_mean for r in game_rows],
            [r.score_std for r in game_rows],
            [colours[r.policy] for r in game_rows],
            [_fmt(r.score_mean) for r in game_rows],
        )
        ax.set_title(game)
        ax.set_xlabel("score")

    if gaps:
        ax = axes[len(games)]
        several = len({r.policy for r in gaps}) > 1
        values = [r.gap_closed for r in gaps]
        _bars(
            ax,
            [f"{r.game}\n{r.policy}" if several else r.game for r in gaps],
            values,
            None,
            [colours[r.policy] for r in gaps],
            [f"{v:.0%}" for v in values],
        )
        for x, name in ((0.0, "random"), (1.0, "expert")):
            ax.axvline(x, color="#505050", linestyle="--", linewidth=1)
            ax.annotate(
                name,
                (x, 1.0),
                xycoords=("data", "axes fraction"),  # x in data, y at the top of the axes
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color="#505050",
            )
        lo, hi = min([0.0, *values]), max([1.0, *values])
        ax.set_xlim(lo - 0.08 * (hi - lo), hi + 0.25 * (hi - lo))
        ax.xaxis.set_major_formatter(_percent_formatter())
        ax.set_title("gap closed", pad=14)
        ax.set_xlabel("random = 0%, expert = 100%")
    return fig


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def _bars(
    ax: Any,
    labels: Sequence[str],
    values: Sequence[float],
    stds: Sequence[float] | None,
    colours: Sequence[str],
    texts: Sequence[str],
) -> None:
    """Horizontal bars, first at the top, with optional std whiskers and a value text beside each."""
    ys = list(range(len(labels)))
    ax.barh(
        ys,
        values,
        xerr=stds,
        color=colours,
        height=0.6,
        capsize=3 if stds else 0,
        error_kw={"elinewidth": 1, "ecolor": "#202020"},
    )
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    # Where each bar's whisker ends (away from 0), so texts sit beyond it.
    ends = [v + math.copysign(s, v) for v, s in zip(values, stds or [0.0] * len(values), strict=True)]
    lo, hi = min([0.0, *ends]), max([0.0, *ends])
    span = (hi - lo) or 1.0
    # Room for the value texts: right of bars that end >= 0, left of those that end < 0.
    ax.set_xlim(lo - (0.25 * span if lo < 0 else 0.0), hi + (0.22 * span if hi > 0 or lo == 0 else 0.05 * span))
    for y, end, text in zip(ys, ends, texts, strict=True):
        ax.annotate(
            text,
            (end, y),
            xytext=(4 if end >= 0 else -4, 0),
            textcoords="offset points",
            ha="left" if end >= 0 else "right",
            va="center",
            fontsize=9,
        )


# --------------------------------------------------------------------------------------------------
# DAgger rounds
# --------------------------------------------------------------------------------------------------

RoundPoint = tuple[int, float, float, "float | None"]
"""``(round, score_mean, score_std, agreement)``; round -1 is the starting model."""


def dagger_chart(
    series: dict[str, Sequence[RoundPoint]],
    path: str | os.PathLike[str],
    *,
    references: dict[str, float] | None = None,
    size: tuple[int, int] = (900, 420),
) -> Path:
    """Write :func:`dagger_figure` to ``path`` (PNG, atomically); returns it."""
    return _save_png(dagger_figure(series, references=references, size=size), path)


def dagger_figure(
    series: dict[str, Sequence[RoundPoint]],
    *,
    references: dict[str, float] | None = None,
    size: tuple[int, int] = (900, 420),
) -> Any:
    """Two panels against the round: the score (dots and std whiskers, one line per run, e.g.
    DAgger and plain cloning) with dashed ``references`` (e.g. ``{"random": 202, "expert": 520}``),
    and the agreement with the expert in the agent's own states (0-100%). Round -1 is drawn as
    "start"; an agreement of None is left out."""
    fig = _new_figure(*size)
    score_ax, agree_ax = fig.subplots(1, 2)
    rounds: set[int] = set()
    for k, (label, points) in enumerate(series.items()):
        colour = _POLICY_COLOURS[k % len(_POLICY_COLOURS)]
        pts = sorted(points)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        rounds.update(xs)
        score_ax.errorbar(
            xs, [p[1] for p in pts], yerr=[p[2] for p in pts], color=colour, marker="o", capsize=3, label=label
        )
        agreed = [(p[0], p[3]) for p in pts if p[3] is not None]
        if agreed:
            agree_ax.plot(*zip(*agreed, strict=True), color=colour, marker="o", label=label)
    for name, value in (references or {}).items():
        score_ax.axhline(value, color=_BASELINE_COLOURS.get(name, "#808080"), linestyle="--", linewidth=1)
        score_ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8)
    ticks = sorted(rounds)
    for ax, title in ((score_ax, "score (whisker: std over seeds)"), (agree_ax, "agreement in own states")):
        ax.set_xticks(ticks, ["start" if r < 0 else str(r) for r in ticks])
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(loc="best", fontsize=8)
    agree_ax.set_ylim(0.0, 1.0)
    agree_ax.yaxis.set_major_formatter(_percent_formatter())
    return fig


# --------------------------------------------------------------------------------------------------
# Latency tolerance
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyPoint:
    """One point of the latency chart: a play mode's score on a game at a latency."""

    game: str
    mode: str
    latency_ms: float
    score_mean: float
    score_std: float = 0.0


_LATENCY_TITLE = "score against policy latency (band: std over episodes)"


def latency_chart(
    path: str | os.PathLike[str],
    points: Sequence[LatencyPoint],
    *,
    title: str = _LATENCY_TITLE,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write :func:`latency_figure` of ``points`` to ``path`` (PNG, atomically); returns the path."""
    return _save_png(latency_figure(points, title=title, size=size), path)


def latency_figure(
    points: Sequence[LatencyPoint], *, title: str = _LATENCY_TITLE, size: tuple[int, int] | None = None
) -> Any:
    """One panel per game (its own score scale), one line per mode with a +-std band, latency on x."""
    if not points:
        raise ValueError("latency_figure needs at least one point")
    games = list(dict.fromkeys(p.game for p in points))
    modes = list(dict.fromkeys(p.mode for p in points))
    colours = _colours(modes)
    width, height = size or (440 * len(games) + 40, 380)
    fig = _new_figure(width, height)
    axes = fig.subplots(1, len(games), squeeze=False)[0]
    for ax, game in zip(axes, games, strict=True):
        for mode in modes:
            line = sorted((p for p in points if p.game == game and p.mode == mode), key=lambda p: p.latency_ms)
            if not line:
                continue
            x = [p.latency_ms for p in line]
            y = [p.score_mean for p in line]
            ax.plot(x, y, marker="o", color=colours[mode], label=mode, linestyle="--" if mode == "sync" else "-")
            lo = [p.score_mean - p.score_std for p in line]
            hi = [p.score_mean + p.score_std for p in line]
            ax.fill_between(x, lo, hi, color=colours[mode], alpha=0.12, linewidth=0)
        ax.set_title(game)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    return fig
