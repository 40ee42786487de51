"""The DAgger loop: the model plays, the expert labels the states it reaches, aggregate, retrain.

``nitrogen dagger --env ale:Gopher --expert scripted --rounds 3 --init CKPT --out RUN`` runs
:func:`run_dagger`, which is written on the same functions as the public commands:

1. **record** (:func:`nitrogen.runtime.dataset_writer.record`, ``--label scripted``): the current
   model drives (the expert with probability ``beta * beta_decay ** round``), and every row holds
   the expert's action for the frame; the recording's ``agreement`` is the share of the model's
   own frames on which it did what the expert would have done;
2. **aggregate and fine-tune** (:func:`nitrogen.training.run.prepare_finetune` and
   :func:`~nitrogen.training.run.finetune`): every round's data so far, ``steps`` optimizer steps,
   continuing from the last round's model (a released-format ``model.pt``);
3. **evaluate** (:func:`evaluate`): the new model plays the held-out ``eval_seeds`` through the one
   episode loop with the expert watching, which gives the score and the agreement in its own states.

Layout of ``RUN``::

    dagger.json                      # the config and one entry per finished round (atomic)
    dagger.png                       # score and agreement against the round
    round-00/record/{data,info.json} # the round's labelled recording
    round-00/train/model.pt          # the model after the round (plus the trainer's files)
    cache/                           # decoded frames for training

A killed run resumes at round granularity: ``dagger.json`` is rewritten atomically after each
round, and a round folder without its entry is removed and done again. Plain behaviour cloning
with the same budget is the same loop with ``beta=1`` (the expert drives every frame): the same
labelled frames per round, the same training steps, the same evaluation.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..atomic import atomic_write_json
from .dataset_writer import LabelledEnv, LabelTally, make_labeller, record
from .loop import Observer, PlayConfig, Step, run_episode

log = logging.getLogger("nitrogen.dagger")

STATE_FILE = "dagger.json"
PLOT_FILE = "dagger.png"


class DaggerConfig(BaseModel):
    """Settings of :func:`run_dagger`; the defaults are those of ``nitrogen dagger``."""

    model_config = ConfigDict(extra="forbid")

    env: str
    init: str = Field(description="released-format checkpoint the first round starts from, or init:PRESET")
    expert: Literal["scripted"] = "scripted"
    rounds: int = Field(3, ge=1)
    episodes: int = Field(2, ge=1, description="episodes recorded per round")
    max_frames: int = Field(1000, ge=1, description="frames per recorded episode")
    record_seed: int = Field(1000, description="round r, episode i is recorded on seed record_seed + r * episodes + i")
    beta: float = Field(0.0, ge=0.0, le=1.0, description="chance that the expert drives a frame in round 0")
    beta_decay: float = Field(1.0, ge=0.0, le=1.0, description="round r uses beta * beta_decay ** r")
    steps: int = Field(200, ge=1, description="optimizer steps per round")
    overrides: list[str] = Field(default_factory=list, description="FinetuneConfig key=value for every round")
    eval_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    eval_max_frames: int = Field(1000, ge=1)
    eval_init: bool = Field(True, description="also evaluate the starting model (round -1 of the table)")
    actions_per_chunk: int | None = Field(None, ge=1, description="receding horizon while the model plays")
    explore: float = Field(0.0, ge=0.0, lt=1.0)
    num_steps: int | None = Field(None, ge=1, description="Euler steps of the model (default: the checkpoint's)")
    device: str | None = None

    def round_beta(self, r: int) -> float:
        return self.beta * self.beta_decay**r

    def round_seeds(self, r: int) -> list[int]:
        return [self.record_seed + r * self.episodes + i for i in range(self.episodes)]

    def same_run(self, other: DaggerConfig) -> list[str]:
        """Fields that differ from ``other`` other than ``rounds`` (a resumed run may add rounds) and
        ``device`` (it may resume elsewhere)."""
        mine, theirs = self.model_dump(exclude={"rounds", "device"}), other.model_dump(exclude={"rounds", "device"})
        return sorted(k for k in mine if mine[k] != theirs[k])


class _Agreement(Observer):
    """Counts, in an episode played through a :class:`LabelledEnv`, the frames that agree."""

    def __init__(self, labelled: LabelledEnv) -> None:
        self.labelled, self.tally = labelled, LabelTally()

    def on_step(self, step: Step) -> None:
        self.tally.add(self.labelled, step)


def evaluate(
    env: Any,
    policy: Any,
    seeds: list[int],
    *,
    max_frames: int,
    actions_per_chunk: int | None = None,
    expert: str = "scripted",
) -> dict[str, Any]:
    """Play ``policy`` on each seed (sync, as ``nitrogen eval``) with the expert labelling every frame
    but never driving; returns ``scores``, ``score_mean``, ``score_std`` and ``agreement``."""
    labelled = LabelledEnv(env, make_labeller(expert, env, beta=0.0))
    watcher = _Agreement(labelled)
    config = PlayConfig(mode="sync", max_frames=max_frames, video=False, actions_per_chunk=actions_per_chunk)
    scores = [run_episode(labelled, policy, config, [watcher], seed=s).score for s in seeds]
    tally = watcher.tally.summary()
    return {
        "seeds": list(seeds),
        "scores": scores,
        "score_mean": float(np.mean(scores)),
        "score_std": float(np.std(scores)),
        "agreement": tally["agreement"],
        "frames": tally["policy_frames"],
    }


def _cpu_s() -> float:
    return time.process_time()  # this process's CPU time, every torch thread included


def _initial_model(config: DaggerConfig, out: Path) -> str:
    """The first round's checkpoint: ``init`` itself, or ``init:PRESET`` written to ``out/init/model.pt``."""
    from ..model.presets import INIT_PREFIX

    if not config.init.startswith(INIT_PREFIX):
        return config.init
    path = out / "init" / "model.pt"
    if not path.is_file():
        from ..model.checkpoint import save_checkpoint
        from ..training.run import starting_checkpoint

        raw = starting_checkpoint(config.init)
        save_checkpoint(path, raw.state_dict, raw.config, raw.game_mapping)
    return str(path)


def _load_state(out: Path, config: DaggerConfig) -> dict[str, Any]:
    import json

    path = out / STATE_FILE
    if not path.is_file():
        return {"config": config.model_dump(mode="json"), "init_eval": None, "rounds": []}
    state = json.loads(path.read_text(encoding="utf-8"))
    differ = config.same_run(DaggerConfig.model_validate(state["config"]))
    if differ:
        raise ValueError(f"{path} belongs to a run with other settings ({', '.join(differ)}); use another --out")
    state["config"] = config.model_dump(mode="json")
    return state


def _save(out: Path, state: dict[str, Any]) -> None:
    atomic_write_json(out / STATE_FILE, state)
    from ..rundir.plots import dagger_chart

    dagger_chart({"dagger" if state["config"]["beta"] < 1 else "behaviour cloning": _points(state)}, out / PLOT_FILE)


def _points(state: dict[str, Any]) -> list[tuple[int, float, float, float | None]]:
    """``(round, score_mean, score_std, agreement)`` per evaluated round (-1: the starting model)."""
    rows = ([(-1, state["init_eval"])] if state.get("init_eval") else []) + [
        (r["round"], r["eval"]) for r in state["rounds"]
    ]
    return [(r, e["score_mean"], e["score_std"], e["agreement"]) for r, e in rows]


def run_dagger(
    config: DaggerConfig,
    out_dir: str | Path,
    *,
    make_env: Callable[[str], Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the loop of the module docstring; returns the state written to ``dagger.json``.

    ``on_round`` is called with each finished round's entry after it is saved (progress; a
    ``KeyboardInterrupt`` from it stops the run there, as a kill would).
    """
    from ..training.run import finetune, prepare_finetune
    from .sources import make_policy

    if make_env is None:
        from ..envs import make_env
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, config)
    current = state["rounds"][-1]["model"] if state["rounds"] else _initial_model(config, out)

    def play_eval(model: str) -> dict[str, Any]:
        started = _cpu_s()
        with make_env(config.env) as env:
            policy = make_policy(f"ckpt:{model}", env=env, seed=0, device=config.device, num_steps=config.num_steps)
            try:
                result = evaluate(
                    env,
                    policy,
                    config.eval_seeds,
                    max_frames=config.eval_max_frames,
                    actions_per_chunk=config.actions_per_chunk,
                    expert=config.expert,
                )
            finally:
                policy.close()
        return result | {"cpu_s": _cpu_s() - started}

    if config.eval_init and state.get("init_eval") is None:
        state["init_eval"] = play_eval(current)
        _save(out, state)
    for r in range(len(state["rounds"]), config.rounds):
        round_dir = out / f"round-{r:02d}"
        if round_dir.exists():
            shutil.rmtree(round_dir)  # a round a kill interrupted: its entry was never written
        beta = config.round_beta(r)
        seeds = config.round_seeds(r)
        log.info("round %d: recording %d episodes (beta %.3f) with %s", r, config.episodes, beta, current)
        t0 = _cpu_s()
        with make_env(config.env) as env:
            # With beta = 1 the expert drives every frame and the model's chunks are never played:
            # the expert itself is then the loop's policy, which gives the same rows (see the tests).
            driver = "scripted" if beta >= 1.0 else f"ckpt:{current}"
            policy = make_policy(driver, env=env, seed=r, device=config.device, num_steps=config.num_steps)
            try:
                info = record(
                    env,
                    policy,
                    episodes=config.episodes,
                    out_dir=round_dir / "record",
                    seed=seeds[0],
                    max_frames=config.max_frames,
                    actions_per_chunk=config.actions_per_chunk,
                    explore=config.explore,
                    label=config.expert,
                    beta=beta,
                )
            finally:
                policy.close()
        t1 = _cpu_s()
        data = [str(out / f"round-{k:02d}" / "record" / "data") for k in range(r + 1)]
        prep = prepare_finetune(
            data,
            current,
            overrides=[f"max_steps={config.steps}", *config.overrides],
            eval_fraction=0.0,
            cache_dir=out / "cache",
        )
        summary = finetune(prep.config, prep.checkpoint, prep.train, None, round_dir / "train")
        model = summary["paths"]["model"]
        t2 = _cpu_s()
        result = play_eval(model)
        entry = {
            "round": r,
            "beta": beta,
            "record_seeds": seeds,
            "frames_labelled": info["rows_written"],
            "frames_labelled_total": sum(x["frames_labelled"] for x in state["rounds"]) + info["rows_written"],
            "driver_frames": info["driver_frames"],
            "record_agreement": info["agreement"],
            "record_scores": info["scores"],
            "train_windows": len(prep.train_indices),
            "train_steps": summary["step"],
            "final_loss": summary.get("final_loss"),
            "model": model,
            "eval": result,
            "cpu_s": {"record": t1 - t0, "train": t2 - t1, "eval": result["cpu_s"]},
        }
        state["rounds"].append(entry)
        _save(out, state)
        current = model
        log.info(
            "round %d: score %.1f +- %.1f, agreement %s",
            r,
            result["score_mean"],
            result["score_std"],
            result["agreement"],
        )
        if on_round is not None:
            on_round(entry)
    return state
