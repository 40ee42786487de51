"""The DAgger loop end to end on a tiny released-format model and real Gopher frames, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitrogen.data import load_gameplay
from nitrogen.model.checkpoint import read_checkpoint
from nitrogen.runtime.dagger import PLOT_FILE, STATE_FILE, DaggerConfig, run_dagger

FAST = ["batch_size=2", "save_every=0", "progress=false", "mode=full", "log_every=1"]


def _config(ckpt: Path, rounds: int) -> DaggerConfig:
    return DaggerConfig(
        env="ale:Gopher",
        init=str(ckpt),
        rounds=rounds,
        episodes=1,
        max_frames=40,
        steps=2,
        overrides=FAST,
        eval_seeds=[7],
        eval_max_frames=30,
        eval_init=True,
    )


class Stop(KeyboardInterrupt):
    """Stands for a kill right after a round was saved."""


def test_two_rounds_end_to_end_and_resume_after_a_kill(tiny_ckpt: Path, tmp_path: Path):
    out = tmp_path / "run"
    done: list[int] = []

    def kill_after_first(entry: dict) -> None:
        done.append(entry["round"])
        raise Stop

    with pytest.raises(Stop):
        run_dagger(_config(tiny_ckpt, 2), out, on_round=kill_after_first)
    saved = json.loads((out / STATE_FILE).read_text())
    assert [r["round"] for r in saved["rounds"]] == [0] and done == [0]
    first_model = Path(saved["rounds"][0]["model"])
    stamp = first_model.stat().st_mtime_ns
    (out / "round-01" / "record").mkdir(parents=True)  # a round the kill interrupted half-way
    (out / "round-01" / "record" / "junk").write_text("partial")

    state = run_dagger(_config(tiny_ckpt, 2), out, on_round=lambda e: done.append(e["round"]))
    assert done == [0, 1]  # round 0 was not done again
    assert first_model.stat().st_mtime_ns == stamp
    assert not (out / "round-01" / "record" / "junk").exists()
    assert [r["round"] for r in state["rounds"]] == [0, 1]
    assert state["init_eval"]["seeds"] == [7]
    for r, entry in enumerate(state["rounds"]):
        assert entry["frames_labelled"] == 40 and entry["train_steps"] == 2
        assert entry["record_seeds"] == [1000 + r]
        assert entry["driver_frames"] == {"policy": 40}  # beta 0: the model drove every frame
        assert 0.0 <= entry["record_agreement"] <= 1.0
        assert len(entry["eval"]["scores"]) == 1 and entry["eval"]["frames"] == 30
        read_checkpoint(entry["model"])  # the released format, loadable by every command
    assert state["rounds"][1]["frames_labelled_total"] == 80
    # Round 1 trained on the aggregate of both rounds' recordings, each labelled by the expert.
    rows = load_gameplay(out / "round-01" / "record" / "data")[:]
    assert set(rows["driver"]) == {"policy"} and set(rows["labeller"]) == {"scripted"}
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="other settings"):
        run_dagger(_config(tiny_ckpt, 2).model_copy(update={"steps": 3}), out)
