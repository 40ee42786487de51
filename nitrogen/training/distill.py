"""Few-step students in the released format: ``nitrogen distill``.

A NitroGen chunk costs ``N`` Euler steps of the DiT (16 in the released config). Distillation
trains a *student* with exactly the teacher's architecture and checkpoint format to do in ``K``
steps what the teacher does in ``N``; its ``ckpt_config`` records ``num_inference_timesteps = K``,
so every consumer (``serve``, ``play``, the session) samples with ``K`` steps by default, and a
``distillation`` entry (an extra ``ckpt_config`` key, which the released format keeps and the
loader ignores) records that it is distilled, from which teacher (path and sha256) and how.

Methods
-------
Both methods only need frames: the teacher labels them, so any dataset ``finetune`` reads works.
Both become the same regression: at a state ``x`` at flow time ``t`` on the student's grid
``t_i = i / K``, predict the velocity ``v`` that carries the student to the next grid point.

* ``reflow`` (default): rectified-flow reflow (Liu et al. 2022) restricted to the student's grid.
  The ``N``-step teacher maps noise ``eps`` to an action chunk ``a``; that map is deterministic, so
  the straight path ``x_t = (1 - t) eps + t a`` with constant velocity ``a - eps`` is exact for it.
  The student is trained at ``t_i`` on ``(x_{t_i}, a - eps)``. A student that fits ``t = 0`` exactly
  lands on the straight path at ``t_1``, so every later grid point is where it was trained. One
  labelling pass of the ``N``-step teacher serves every ``K``; for ``K = 1`` it is direct knowledge
  distillation of the ODE map.
* ``progressive``: progressive distillation (Salimans & Ho 2022), in stages ``N -> N/2 -> ... -> K``
  (``N / K`` must be a power of two). In a stage, the previous model (the teacher first) runs
  ``2K'`` steps from ``eps``; the student of ``K'`` steps learns, from each even state ``s_{2i}``, one
  step of velocity ``(s_{2i+2} - s_{2i}) K'`` (two teacher steps in one). Each stage is a full
  trainer run, and its error is the next stage's target, so it costs ``log2(N / K)`` runs.

Why these two, against the alternatives:

* Consistency distillation (Song et al. 2023) learns ``x_t -> x_1`` maps and needs an EMA target
  network plus a consistency loss; with the released parametrisation (a velocity head) it would
  have to be expressed as a velocity anyway, and its few-step quality on low-dimensional outputs is
  not better than reflow's, while it takes more training.
* Shortcut models (Frans et al. 2024) condition the network on the step size ``d``: that is a new
  input, so a new embedding and a checkpoint the released code cannot run. Excluded by the format.
* Adversarial / score-distillation methods (ADD, DMD) add a discriminator or a second score network:
  much more compute than the 2-core CPU budget this project trains on, for image-scale gains.
* Reflow and progressive keep the exact architecture and the velocity parametrisation, train with
  the unchanged flow-matching loss (:meth:`NitroGenModel.flow_matching_loss`), and so reuse the
  trainer as it is.

How the trainer is reused: a regression pair ``(x, t, v)`` is the flow-matching sample whose noise is
``x - t v`` and whose action is ``x + (1 - t) v`` (then ``(1 - t) noise + t action = x`` and
``action - noise = v``). :class:`DistillTargets` items carry ``actions``, ``noise`` and ``t`` so, and
the trainer uses an item's own ``noise``/``t`` when it has them. Everything else is the fine-tuning
trainer: Accelerate, atomic checkpoints, exact resume after SIGKILL, progress, ``metrics.csv``,
``curves.png``, LoRA or full. Its eval is the agreement with the ``N``-step teacher: the eval items'
``actions`` are the teacher's chunks from the noise the eval samples the student with
(:func:`nitrogen.training.order.eval_noise`), so ``eval_f1``, ``eval_stick_mae`` and
``eval_first_action_acc`` compare student and teacher on held-out episodes at equal noise.

Teacher labels are cached in ``OUT/labels/<key>/`` (safetensors shards, each written atomically),
keyed by the teacher's sha256 and everything that changes them, so a killed run resumes its labelling
and a rerun reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..atomic import atomic_write_json
from ..model.card import file_sha256
from ..model.checkpoint import RawCheckpoint, model_from_checkpoint, read_checkpoint
from ..model.configuration import DISTILLATION_KEY, CheckpointConfig
from ..model.modeling import Conditioning, NitroGenModel
from .config import FinetuneConfig, load_config, parse_overrides
from .evaluation import batch_condition, spread_indices, window_games
from .order import eval_noise
from .trainer import Trainer, _save_tensors

__all__ = [
    "DISTILL_DEFAULTS",
    "DistillConfig",
    "DistillTargets",
    "TeacherAgreement",
    "distill",
    "distill_finetune_config",
    "euler_states",
    "student_config",
]

Method = Literal["reflow", "progressive"]

DISTILL_DEFAULTS: dict[str, Any] = {
    "mode": "full",
    "freeze_vision": True,
    "freeze_mixer": True,
    "disable_dropout": True,
    "lr": 2e-4,
    "max_steps": 600,
    "schedule": "cosine",
    "min_lr_ratio": 0.05,
    "batch_size": 32,
    "save_every": 100,
    "eval_every": 200,
    "eval_batches": 8,
    "log_every": 10,
}
"""Fine-tuning defaults of a distillation run (``--config``/``--set`` override them): the denoiser
changes, so the vision tower and the mixer are frozen; dropout is off, since the targets are the
teacher's deterministic outputs."""

WARMUP_STEPS = 50
"""Linear warmup of a distillation run (at most a tenth of ``max_steps``) unless set."""

LABEL_SALT = 23
"""Mixed into the seed of the training noise, so it never equals the eval noise."""


class DistillConfig(BaseModel):
    """What a distillation run does, beside the fine-tuning config. Values are checked on creation."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "reflow"
    steps: int = Field(2, ge=1, le=256)
    """``K``: Euler steps of the student; recorded as its ``num_inference_timesteps``."""
    teacher_steps: int | None = Field(None, ge=1, le=1000)
    """``N``: Euler steps of the teacher's labels (None: the teacher's ``num_inference_timesteps``)."""
    noises_per_frame: int = Field(2, ge=1, le=64)
    """Teacher chunks per frame, each from its own noise."""
    max_frames: int | None = Field(4096, ge=1)
    """Training windows labelled, spread evenly over the training set (None: all of them)."""
    eval_frames: int = Field(256, ge=0)
    """Held-out windows labelled for the agreement eval, spread evenly (0: no eval)."""
    label_batch: int = Field(64, ge=1)
    """Windows per teacher pass while labelling."""
    shard_frames: int = Field(1024, ge=1)
    """Windows per label shard (the unit a killed labelling resumes from)."""

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.teacher_steps is not None:
            self.check_steps(self.teacher_steps)
        return self

    def check_steps(self, teacher_steps: int) -> None:
        """Raise ``ValueError`` unless the method can go from ``teacher_steps`` to :attr:`steps`."""
        if self.method == "progressive":
            ratio = teacher_steps / self.steps
            if teacher_steps <= self.steps or ratio != int(ratio) or (int(ratio) & (int(ratio) - 1)):
                raise ValueError(
                    f"progressive distillation halves the steps: teacher steps / steps must be a power of two "
                    f"of at least 2, got {teacher_steps} / {self.steps}"
                )

    def stages(self, teacher_steps: int) -> list[tuple[int, int]]:
        """``(label steps, student steps)`` of each stage: one for reflow, halvings for progressive."""
        self.check_steps(teacher_steps)
        if self.method == "reflow":
            return [(teacher_steps, self.steps)]
        out, k = [], teacher_steps
        while k > self.steps:
            out.append((k, k // 2))
            k //= 2
        return out


def distill_finetune_config(
    config: FinetuneConfig | str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> FinetuneConfig:
    """The fine-tuning config of a distillation run: :data:`DISTILL_DEFAULTS`, then ``config``'s
    own fields (a :class:`FinetuneConfig` or a YAML/JSON file), then ``key=value`` overrides; the
    warmup is :data:`WARMUP_STEPS` (at most a tenth of ``max_steps``) unless one of them sets it."""
    given: dict[str, Any] = {}
    if isinstance(config, FinetuneConfig):
        given = config.model_dump(exclude_unset=True)
    elif config is not None:
        given = load_config(config).model_dump(exclude_unset=True)
    fields = DISTILL_DEFAULTS | given | parse_overrides(list(overrides))
    if "warmup_steps" not in fields:
        # The student starts at the teacher, close to its targets: a warmup keeps Adam's first,
        # full-size steps from throwing it away.
        fields["warmup_steps"] = min(WARMUP_STEPS, int(fields["max_steps"]) // 10)
    return FinetuneConfig.model_validate(fields)


# ------------------------------------------------------------------------------------ teacher


def euler_states(model: NitroGenModel, cond: Conditioning, noise: Tensor, num_steps: int) -> list[Tensor]:
    """Every state ``x_0 = noise, ..., x_N`` of :meth:`NitroGenModel.sample`'s Euler integration.

    The same schedule, velocity and float32 accumulation as ``sample`` (a test holds the last state
    equal to ``sample``'s output); progressive distillation needs the states in between.
    """
    schedule = model.model.schedule(model.step_buckets(num_steps, noise.device))
    x = noise.float()
    states, dt = [x], 1.0 / num_steps
    for i in range(num_steps):
        buckets, mods, out_mod = schedule.step(i, x.shape[0])
        x = x + dt * model.velocity(x, cond, buckets, mods, out_mod).float()
        states.append(x)
    return states


def window_noise(indices: Sequence[int], draw: int, shape: tuple[int, int], seed: int) -> Tensor:
    """Training noise ``(B, H, A)`` of draw ``draw`` for each window, from ``(seed, window, draw)``."""
    out = []
    for idx in indices:
        key = [seed, LABEL_SALT, int(idx), int(draw)]
        g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out)


def teacher_targets(
    model: NitroGenModel,
    cond: Conditioning,
    noise: Tensor,
    *,
    method: Method,
    label_steps: int,
    steps: int,
) -> dict[str, Tensor]:
    """What a teacher pass labels: ``reflow``, the ``label_steps``-step chunk ``chunk (B, H, A)``
    and its ``noise``; ``progressive`` (``label_steps = 2K``), the grid states ``x (B, K, H, A)``
    ``x_i = s_{2i}`` and velocities ``v_i = (s_{2i+2} - s_{2i}) K`` of the teacher's states ``s``."""
    eps = noise.float()
    if method == "reflow":
        return {"noise": eps, "chunk": model.sample(cond, eps, label_steps).float()}
    if label_steps != 2 * steps:
        raise ValueError(f"a progressive stage labels with 2 x {steps} steps, not {label_steps}")
    s = euler_states(model, cond, eps, label_steps)
    x = torch.stack([s[2 * i] for i in range(steps)], dim=1)
    v = torch.stack([(s[2 * i + 2] - s[2 * i]) * steps for i in range(steps)], dim=1)
    return {"x": x, "v": v}


def grid_targets(labels: dict[str, Tensor], steps: int) -> tuple[Tensor, Tensor]:
    """States ``x (..., K, H, A)`` and velocities ``v`` at the student's grid ``t_i = i/K`` from labels.

    Reflow: on the straight path from the noise to the chunk, ``x_i = (1 - t_i) noise + t_i chunk``
    and ``v_i = chunk - noise``; one reflow labelling thus serves every ``K``. Progressive labels
    are grid targets already.
    """
    if "x" in labels:
        return labels["x"], labels["v"]
    eps, a = labels["noise"], labels["chunk"]
    t = (torch.arange(steps, dtype=torch.float32) / steps).view(steps, 1, 1)  # (K, 1, 1)
    x = (1 - t) * eps.unsqueeze(-3) + t * a.unsqueeze(-3)
    return x, (a - eps).unsqueeze(-3).expand_as(x).contiguous()


def _loader(frames: Dataset, rows: Sequence[int], batch: int) -> DataLoader:
    return DataLoader(Subset(frames, list(rows)), batch_size=batch, shuffle=False)


@torch.no_grad()
def label_windows(
    teacher: NitroGenModel,
    frames: Dataset,
    cache: Path,
    options: DistillConfig,
    *,
    label_steps: int,
    steps: int,
    seed: int,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Teacher targets ``x, v (N, M, K, H, A)`` of every window of ``frames`` and noise draw ``m``
    (:func:`teacher_targets`, then :func:`grid_targets`).

    Written in shards of :attr:`DistillConfig.shard_frames` windows under ``cache``; a shard that is
    already there is read back, not recomputed.
    """
    cache.mkdir(parents=True, exist_ok=True)
    n = len(frames)
    mcfg = teacher.config.model_cfg
    shape = (mcfg.action_horizon, mcfg.action_dim)
    parts: list[dict[str, Tensor]] = []
    bar = tqdm(total=n, disable=not progress, desc=f"teacher labels ({label_steps} steps)", dynamic_ncols=True)
    for lo in range(0, n, options.shard_frames):
        rows = list(range(lo, min(n, lo + options.shard_frames)))
        path = cache / f"shard-{lo // options.shard_frames:05d}.safetensors"
        if path.is_file():
            part = load_file(path)
        else:
            pieces: list[dict[str, Tensor]] = []
            for batch in _loader(frames, rows, options.label_batch):
                cond = batch_condition(teacher, batch)
                index = batch["_row"].tolist()
                draws = [
                    teacher_targets(
                        teacher,
                        cond,
                        window_noise(index, m, shape, seed),
                        method=options.method,
                        label_steps=label_steps,
                        steps=steps,
                    )
                    for m in range(options.noises_per_frame)
                ]
                pieces.append({k: torch.stack([d[k] for d in draws], dim=1) for k in draws[0]})  # (B, M, ...)
            part = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
            _save_tensors(part, path)
        parts.append(part)
        bar.update(len(rows))
    bar.close()
    return grid_targets({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, steps)


@torch.no_grad()
def label_agreement(
    teacher: NitroGenModel, frames: Dataset, cache: Path, *, label_steps: int, seed: int, batch: int
) -> Tensor:
    """The teacher's ``label_steps``-step chunks ``(E, H, A)`` of eval window ``e`` from ``eval_noise(e, seed)``."""
    path = cache / "agreement.safetensors"
    if path.is_file():
        return load_file(path)["actions"]
    mcfg = teacher.config.model_cfg
    shape = (mcfg.action_horizon, mcfg.action_dim)
    out = []
    for items in _loader(frames, range(len(frames)), batch):
        cond = batch_condition(teacher, items)
        noise = eval_noise(items["_row"], shape, seed)
        out.append(teacher.sample(cond, noise, label_steps).float())
    actions = torch.cat(out)
    cache.mkdir(parents=True, exist_ok=True)
    _save_tensors({"actions": actions}, path)
    return actions


class _Rows(Dataset):
    """Windows of ``frames`` (any finetune dataset) at ``rows``, each item tagged with its position ``_row``."""

    def __init__(self, frames: Dataset, rows: Sequence[int]):
        self.frames, self.rows = frames, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = dict(self.frames[self.rows[i]])
        item["_row"] = torch.tensor(i, dtype=torch.long)
        return item

    def window_game(self, i: int) -> str | None:
        return window_games(self.frames, [self.rows[i]])[0]


def _frame_fields(item: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {"pixels": item["pixels"], "frame_valid": item["frame_valid"]}
    if "game_ids" in item:
        out["game_ids"] = item["game_ids"]
    return out


class DistillTargets(Dataset):
    """Training items: window ``n``, noise draw ``m``, grid point ``i`` of ``x, v (N, M, K, H, A)``.

    ``actions = x + (1 - t) v``, ``noise = x - t v`` and ``t`` make the trainer's flow-matching loss
    the regression of ``v`` at ``x`` (see the module docstring). ``t`` is the grid time ``i/K`` moved
    half a bucket up, so that ``floor(t * num_buckets)`` is exactly the bucket sampling uses
    (:meth:`NitroGenModel.step_buckets`); the identities hold for any ``t``.
    """

    def __init__(self, frames: _Rows, x: Tensor, v: Tensor, buckets: Sequence[int], num_buckets: int):
        N, M, K = x.shape[:3]
        if len(frames) != N or len(buckets) != K:
            raise ValueError(f"{len(frames)} windows and {len(buckets)} grid points for targets {tuple(x.shape)}")
        self.frames, self.x, self.v = frames, x, v
        self.times = [(b + 0.5) / num_buckets for b in buckets]
        self.M, self.K = M, K

    def __len__(self) -> int:
        return self.x.shape[0] * self.M * self.K

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        n, m, i = j // (self.M * self.K), (j // self.K) % self.M, j % self.K
        x, v, t = self.x[n, m, i], self.v[n, m, i], self.times[i]
        return {
            **_frame_fields(self.frames[n]),
            "actions": x + (1 - t) * v,
            "noise": x - t * v,
            "t": torch.tensor(t, dtype=torch.float32),
            "action_mask": torch.ones_like(x),
            "index": torch.tensor(j, dtype=torch.long),
        }

    def window_game(self, j: int) -> str | None:
        return self.frames.window_game(j // (self.M * self.K))


class TeacherAgreement(Dataset):
    """Eval items whose ``actions`` are the teacher's chunks from ``eval_noise(index)``: the trainer's
    sampled metrics then measure the student's agreement with the teacher at equal noise."""

    def __init__(self, frames: _Rows, actions: Tensor):
        self.frames, self.actions = frames, actions

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, e: int) -> dict[str, Tensor]:
        a = self.actions[e]
        return {
            **_frame_fields(self.frames[e]),
            "actions": a,
            "action_mask": torch.ones_like(a),
            "index": torch.tensor(e, dtype=torch.long),
        }

    def window_game(self, e: int) -> str | None:
        return self.frames.window_game(e)


# ------------------------------------------------------------------------------------ student


def student_config(teacher: CheckpointConfig, steps: int, provenance: dict[str, Any]) -> CheckpointConfig:
    """The teacher's config with ``num_inference_timesteps = steps`` and the ``distillation`` record."""
    data = teacher.to_dict()
    data["model_cfg"]["num_inference_timesteps"] = steps
    data[DISTILLATION_KEY] = provenance
    return CheckpointConfig.model_validate(data)


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def distill(
    teacher: RawCheckpoint | str | os.PathLike[str],
    train_frames: Dataset,
    eval_frames: Dataset | None,
    out_dir: str | os.PathLike[str],
    *,
    options: DistillConfig,
    config: FinetuneConfig | None = None,
    resume: bool = False,
    data: Sequence[str] = (),
    label_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Distil ``teacher`` into an ``options.steps``-step student written to ``out_dir/model.pt``.

    ``train_frames``/``eval_frames`` are finetune datasets (e.g. :func:`~nitrogen.training.run.prepare_finetune`'s
    ``train``/``eval``); only their frames are read. ``config`` is the fine-tuning config (default:
    :func:`distill_finetune_config`); its ``max_steps`` applies to each stage. With ``resume`` every
    stage continues from its latest checkpoint, and finished stages are skipped. ``data`` names the
    sources for the provenance record. ``label_dir`` holds the teacher-label cache (default
    ``out_dir/labels``); runs may share one, since every entry is keyed by what made it. Returns a summary with each stage's trainer summary and ``paths``.
    """
    cfg = config if config is not None else distill_finetune_config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_root = Path(label_dir) if label_dir is not None else out / "labels"
    raw = teacher if isinstance(teacher, RawCheckpoint) else read_checkpoint(teacher)
    teacher_path = str(raw.path) if raw.path else None
    teacher_sha = file_sha256(raw.path) if raw.path else None
    label_steps = options.teacher_steps or raw.config.model_cfg.num_inference_timesteps
    stages = options.stages(label_steps)
    train_rows = range(len(train_frames))
    if options.max_frames is not None:
        train_rows = spread_indices(len(train_frames), options.max_frames)
    train_set = _Rows(train_frames, train_rows)
    eval_set = None
    if eval_frames is not None and len(eval_frames) and options.eval_frames:
        eval_set = _Rows(eval_frames, spread_indices(len(eval_frames), options.eval_frames))
    summary: dict[str, Any] = {"stages": [], "out_dir": str(out)}
    atomic_write_json(
        out / "distill.json",
        {
            "distill_config": options.model_dump(mode="json"),
            "finetune_config": cfg.model_dump(mode="json"),
            "teacher": teacher_path,
            "teacher_sha256": teacher_sha,
            "teacher_steps": label_steps,
            "stages": stages,
            "data": list(data),
            "train_windows": len(train_set),
            "eval_windows": len(eval_set) if eval_set is not None else 0,
        },
    )
    current, current_sha = raw, teacher_sha
    history: list[dict[str, int]] = []
    for number, (n_label, k) in enumerate(stages):
        last = number == len(stages) - 1
        stage_dir = out if last else out / "stages" / f"{k}-steps"
        history.append({"label_steps": n_label, "steps": k})
        provenance = {
            "distilled": True,
            "method": options.method,
            "steps": k,
            "teacher": teacher_path,
            "teacher_sha256": teacher_sha,
            "teacher_steps": label_steps,
            "stages": list(history),
            "noises_per_frame": options.noises_per_frame,
            "train_windows": len(train_set),
            "train_steps": cfg.max_steps,
            "data": list(data),
        }
        student_raw = RawCheckpoint(
            config=student_config(raw.config, k, provenance),
            state_dict={},
            game_mapping=raw.game_mapping,
            path=raw.path,
        )
        done = stage_dir / "model.pt"
        if not last and done.is_file() and resume:
            current, current_sha = read_checkpoint(done), file_sha256(done)
            summary["stages"].append({"steps": k, "skipped": True, "model": str(done)})
            continue
        # Labels first, with the stage's teacher; the student is built only after it is freed.
        key = _key(
            {
                "teacher_sha256": current_sha,
                "method": options.method,
                "label_steps": n_label,
                "steps": k if options.method == "progressive" else None,  # reflow labels serve every K
                "noises": options.noises_per_frame,
                "rows": len(train_set),
                "seed": cfg.seed,
            }
        )
        cache = labels_root / key
        stage_teacher = model_from_checkpoint(_cloned(current))
        stage_teacher.eval()
        x, v = label_windows(
            stage_teacher, train_set, cache, options, label_steps=n_label, steps=k, seed=cfg.seed, progress=cfg.progress
        )
        agreement = None
        if eval_set is not None:
            # The agreement is always with the original N-step teacher, whatever the stage.
            eval_key = _key(
                {"teacher_sha256": teacher_sha, "label_steps": label_steps, "rows": len(eval_set), "seed": cfg.seed}
            )
            origin = stage_teacher if current is raw else model_from_checkpoint(_cloned(raw)).eval()
            agreement = TeacherAgreement(
                eval_set,
                label_agreement(
                    origin,
                    eval_set,
                    labels_root / f"eval-{eval_key}",
                    label_steps=label_steps,
                    seed=cfg.seed,
                    batch=options.label_batch,
                ),
            )
            del origin
        del stage_teacher
        student = model_from_checkpoint(_cloned(current))
        buckets = student.step_buckets(k).tolist()
        train_ds = DistillTargets(train_set, x, v, buckets, raw.config.model_cfg.num_timestep_buckets)
        stage_cfg = cfg.model_copy(update={"eval_sample_steps": k})
        trainer = Trainer(stage_cfg, student, student_raw, train_ds, agreement, stage_dir)
        result = trainer.train(resume=resume)
        result["paths"] = trainer.export()
        result.pop("losses", None)
        result["steps"] = k
        summary["stages"].append(result)
        current = read_checkpoint(result["paths"]["model"])
        current_sha = file_sha256(Path(result["paths"]["model"]))
    summary["model"] = str(out / "model.pt")
    summary["provenance"] = read_checkpoint(out / "model.pt").config.distillation()
    return summary


def _cloned(raw: RawCheckpoint) -> RawCheckpoint:
    """``raw`` with its own copy of the tensors: a model built from it never writes into another's."""
    return RawCheckpoint(
        config=raw.config,
        state_dict={k: v.clone() for k, v in raw.state_dict.items()},
        game_mapping=raw.game_mapping,
        path=raw.path,
    )
