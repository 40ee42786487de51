"""Tests of nitrogen.rundir.plots: real matplotlib figures, real PNG files, real agent cards."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import pytest

from nitrogen.rundir.plots import (
    LatencyPoint,
    ScoreRow,
    curves_figure,
    eval_chart,
    eval_figure,
    latency_chart,
    latency_figure,
    plot_curves,
)

# The numbers of a real evaluation: Freeway 0-12, Gopher 200-540 (one axis could not show both).
ROWS = [
    ScoreRow("ale:Freeway", "x/model.pt", 8.0, 0.9, 8.0 / 12.0),
    ScoreRow("ale:Freeway", "random", 0.0, 0.0),
    ScoreRow("ale:Freeway", "scripted", 12.0, 0.0),
    ScoreRow("ale:Gopher", "x/model.pt", 438.0, 144.0, (438.0 - 202.0) / (520.0 - 202.0)),
    ScoreRow("ale:Gopher", "random", 202.0, 0.0),
    ScoreRow("ale:Gopher", "scripted", 520.0, 0.0),
]


def _no_temp_files(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


def test_plot_curves_writes_a_png_of_the_asked_size(tmp_path: Path) -> None:
    train = [(s, 2.0 * math.exp(-s / 30) + 0.05) for s in range(1, 201)]
    evals = [(s, 2.0 * math.exp(-s / 30) + 0.08) for s in range(20, 201, 20)] + [(210, float("nan"))]
    path = plot_curves(tmp_path / "curves.png", train, evals, size=(640, 400))
    assert path == tmp_path / "curves.png"
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (400, 640, 3)
    assert _no_temp_files(tmp_path)
    # Drawn: the image is not blank (lines and text on white).
    assert (image < 200).any(axis=2).sum() > 2000


def test_curves_use_a_log_axis_only_over_more_than_a_factor_of_ten() -> None:
    steep = curves_figure([(s, 10.0 / s) for s in range(1, 100)])
    flat = curves_figure([(s, 1.0 + 1.0 / s) for s in range(1, 100)])
    assert steep.axes[0].get_yscale() == "log" and flat.axes[0].get_yscale() == "linear"
    # A long noisy train series gets its moving average on top; the eval series keeps its points.
    ax = curves_figure([(s, 1.0 + (s % 7) / 10) for s in range(1, 300)], [(100, 1.2), (200, 1.1)]).axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "train loss (moving average)" in labels and "eval loss" in labels
    eval_line = next(line for line in ax.get_lines() if line.get_label() == "eval loss")
    assert list(eval_line.get_xdata()) == [100, 200] and eval_line.get_marker() == "o"


def test_empty_curves_still_write_a_png(tmp_path: Path) -> None:
    image = cv2.imread(str(plot_curves(tmp_path / "empty.png", [], [])))
    assert image is not None and image.shape == (480, 800, 3)


def test_plots_leave_pyplot_alone(tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    plot_curves(tmp_path / "c.png", [(1, 1.0), (2, 0.5)])
    eval_chart(tmp_path / "e.png", ROWS)
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_eval_chart_has_a_panel_per_game_on_its_own_scale_and_a_gap_panel(tmp_path: Path) -> None:
    fig = eval_figure(ROWS)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["ale:Freeway", "ale:Gopher", "gap closed"]
    freeway, gopher, gap = axes
    # Each game on its own axis: Freeway's reaches past 12 but not near Gopher's 520.
    assert 12.0 < freeway.get_xlim()[1] < 30.0
    assert gopher.get_xlim()[1] > 582.0  # 438 + 144, the agent's whisker
    for ax in (freeway, gopher):
        assert [t.get_text() for t in ax.get_yticklabels()] == ["x/model.pt", "random", "scripted"]
    # The gap panel: random at 0, expert at 1, one bar per game for the one non-baseline policy.
    assert [t.get_text() for t in gap.get_yticklabels()] == ["ale:Freeway", "ale:Gopher"]
    widths = sorted(round(p.get_width(), 4) for p in gap.patches if p.get_height() > 0)
    assert widths == sorted([round(8 / 12, 4), round(236 / 318, 4)])
    assert gap.get_xlim()[0] < 0.0 and gap.get_xlim()[1] > 1.0
    texts = {t.get_text() for t in gap.texts}
    assert {"random", "expert", "67%", "74%"} <= texts

    path = eval_chart(tmp_path / "results.png", ROWS)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] == 3 * 360 and image.shape[0] > 200
    assert _no_temp_files(tmp_path)


def test_eval_chart_with_several_policies_names_them_in_the_gap_panel() -> None:
    rows = [*ROWS, ScoreRow("ale:Freeway", "nitrogen-default-agent", 10.0, 1.0, 10.0 / 12.0)]
    gap = [ax for ax in eval_figure(rows).axes if ax.get_title() == "gap closed"][0]
    labels = [t.get_text() for t in gap.get_yticklabels()]
    assert "ale:Freeway\nx/model.pt" in labels and "ale:Freeway\nnitrogen-default-agent" in labels


def test_eval_chart_without_baselines_or_rows(tmp_path: Path) -> None:
    fig = eval_figure([ScoreRow("ale:Pong", "random", -20.0, 1.0)])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["ale:Pong"]
    assert fig.axes[0].get_xlim()[0] < -21.0  # room left of the negative bar for its value
    assert cv2.imread(str(eval_chart(tmp_path / "none.png", []))) is not None
    with pytest.raises(ValueError, match="two rows"):
        eval_figure([ROWS[0], ROWS[0]])


def test_dagger_chart_draws_score_and_agreement_against_the_round(tmp_path: Path) -> None:
    from nitrogen.rundir.plots import dagger_chart, dagger_figure

    series = {
        "dagger": [(-1, 5.0, 2.0, 0.3), (0, 8.0, 1.0, 0.5), (1, 9.0, 0.5, 0.6)],
        "bc": [(0, 6.0, 1.0, 0.4), (1, 6.5, 1.0, None)],
    }
    fig = dagger_figure(series, references={"random": 1.0, "expert": 20.0})
    score_ax, agree_ax = fig.axes
    assert [t.get_text() for t in score_ax.get_xticklabels()] == ["start", "0", "1"]
    assert agree_ax.get_ylim() == (0.0, 1.0)
    assert [len(line.get_xdata()) for line in agree_ax.get_lines()] == [3, 1]  # None is left out
    assert sorted(line.get_ydata()[0] for line in score_ax.get_lines() if line.get_linestyle() == "--") == [1.0, 20.0]
    path = dagger_chart(series, tmp_path / "dagger.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_chart_has_a_panel_per_game_and_a_line_per_mode(tmp_path: Path) -> None:
    points = [
        LatencyPoint(game, mode, lat, base - lat / (10 if mode == "naive" else 20), 1.0)
        for game, base in (("ale:Freeway", 8.0), ("ale:Gopher", 440.0))
        for mode in ("sync", "naive", "rtc")
        for lat in (0.0, 100.0, 200.0)
    ]
    fig = latency_figure(points)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["ale:Freeway", "ale:Gopher"]
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == ["sync", "naive", "rtc"]
        assert list(ax.get_lines()[1].get_xdata()) == [0.0, 100.0, 200.0]
    assert axes[1].get_ylim()[1] > 400 > axes[0].get_ylim()[1]  # each game on its own scale
    path = latency_chart(tmp_path / "latency.png", points)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] == 2 * 440 + 40
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="at least one point"):
        latency_figure([])


def test_every_mode_of_the_latency_benchmark_gets_its_own_colour() -> None:
    modes = ("sync", "naive", "prefix", "rtc", "naive-x2", "prefix-x2", "rtc-x2", "naive-x4", "rtc-x4")
    points = [LatencyPoint("ale:Gopher", mode, 200.0, 1.0, 0.0) for mode in modes]
    colours = [line.get_color() for line in latency_figure(points).axes[0].get_lines()]
    assert len(colours) == len(modes) and len(set(colours)) == len(modes)
