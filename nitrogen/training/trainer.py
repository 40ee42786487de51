"""The fine-tuning loop on :class:`accelerate.Accelerator`: train, checkpoint, resume, export.

One optimizer step consumes ``grad_accum`` micro batches of ``batch_size`` per process. The data
order, flow noise and time are deterministic functions of the seed and the data position (see
:mod:`.order`), and every checkpoint stores the optimizer, scheduler, EMA, RNG states and the data
position, so ``train(resume=True)`` continues exactly where the latest checkpoint left off.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import IO, Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..atomic import atomic_path, atomic_write, atomic_write_json
from ..model.checkpoint import RawCheckpoint, save_checkpoint
from ..model.modeling import NitroGenModel
from ..rundir.plots import plot_curves
from . import state as ckpt
from .config import FinetuneConfig
from .evaluation import evaluate
from .lora import has_lora, is_lora_param, merge_lora, prepare_model, trainable_state_dict
from .order import DataPosition, ResumableBatchSampler, sample_noise_and_time

__all__ = ["METRIC_COLUMNS", "Trainer", "evaluate", "lr_lambda"]

GAME_EMBEDDING = "game_embedding."
"""Parameter prefix of the game embedding, which is trained without weight decay."""

METRIC_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "lr",
    "samples_per_s",
    "eval_loss",
    "eval_f1",
    "eval_stick_mae",
    "eval_first_action_acc",
)


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """A safetensors file of ``tensors`` (moved to the CPU), written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, tmp)


def lr_lambda(config: FinetuneConfig):
    """The LR multiplier of step ``s``: linear warmup, then cosine to ``min_lr_ratio`` (or flat)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class LossModule(nn.Module):
    """Wraps the model so DDP sees ``training_loss`` as ``forward`` (DDP only syncs through forward)."""

    def __init__(self, model: NitroGenModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        pixels: Tensor,
        frame_valid: Tensor,
        actions: Tensor,
        action_mask: Tensor | None,
        game_ids: Tensor | None,
        noise: Tensor,
        t: Tensor,
    ) -> Tensor:
        return self.model.training_loss(
            pixels, frame_valid, actions, action_mask=action_mask, game_ids=game_ids, noise=noise, t=t
        )


class Trainer:
    """Fine-tunes ``model`` (fresh from :func:`nitrogen.model.checkpoint.load_model`) on ``train_dataset``.

    The model is prepared in place (LoRA, freezing) unless it already carries adapters. Dataset
    items: ``pixels (F,3,S,S)``, ``frame_valid (F,)``, ``actions (H,25)``, ``action_mask (H,25)``,
    ``index ()`` and optionally ``game_ids ()``.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        model: NitroGenModel,
        raw_checkpoint: RawCheckpoint,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        out_dir: str | os.PathLike[str] = "runs/finetune",
    ):
        self.config, self.raw = config, raw_checkpoint
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.out_dir = Path(out_dir)
        cuda = torch.cuda.is_available()
        self.accelerator = Accelerator(
            mixed_precision="bf16" if (cuda and config.bf16) else "no",
            gradient_accumulation_steps=config.grad_accum,
            cpu=not cuda,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        set_seed(config.seed)
        if not (config.mode == "lora" and has_lora(model)):
            self.param_counts = prepare_model(model, config)
        else:
            self.param_counts = {
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "total": sum(p.numel() for p in model.parameters()),
            }
        self.model = model.to(self.accelerator.device)
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        # AdamW's decay shrinks every row of a matrix, seen or not: the game embedding is exempt,
        # so games absent from the data keep their rows exactly (only seen games' rows get gradients).
        decay = [p for n, p in named if p.ndim >= 2 and not n.startswith(GAME_EMBEDDING)]
        no_decay = [p for n, p in named if p.ndim < 2 or n.startswith(GAME_EMBEDDING)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=config.betas,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.ema: dict[str, Tensor] | None = (
            {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            if config.ema is not None
            else None
        )
        self.step = 0
        self.position = DataPosition()
        self.train_history: list[tuple[int, float]] = []
        self.eval_history: list[tuple[int, float]] = []
        self.last_eval: dict[str, Any] | None = None
        self._tb: Any = None
        self._pending_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ properties

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.accelerator.num_processes * self.config.grad_accum

    # ------------------------------------------------------------------------------ checkpoints

    def save_state(self) -> None:
        """Write ``checkpoints/step-N`` atomically (every process writes its RNG state)."""
        acc, cfg = self.accelerator, self.config
        staging = ckpt.staging_dir(self.out_dir, self.step)
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        with atomic_path(staging / f"rng-{acc.process_index}.pt") as tmp:
            torch.save(ckpt.rng_state(), tmp)
        acc.wait_for_everyone()
        if self.is_main:
            weights = self.model.state_dict() if cfg.mode == "full" else trainable_state_dict(self.model)
            _save_tensors({k: v.detach() for k, v in weights.items()}, staging / "weights.safetensors")
            if self.ema is not None:
                _save_tensors(self.ema, staging / "ema.safetensors")
            with atomic_path(staging / "optimizer.pt") as tmp:
                torch.save(self.optimizer.state_dict(), tmp)
            with atomic_path(staging / "scheduler.pt") as tmp:
                torch.save(self.scheduler.state_dict(), tmp)
            meta = {
                "step": self.step,
                "epoch": self.position.epoch,
                "batch": self.position.batch,
                "num_processes": acc.num_processes,
                "batch_size": cfg.batch_size,
                "mode": cfg.mode,
            }
            atomic_write_json(staging / "state.json", meta)
            atomic_write(staging / "config.json", cfg.model_dump_json(indent=2))
            ckpt.publish(self.out_dir, self.step, cfg.keep_last)
        acc.wait_for_everyone()

    def load_state(self, folder: Path) -> None:
        """Restore everything :meth:`save_state` wrote (before :meth:`Accelerator.prepare`)."""
        meta = ckpt.load_json(folder / "state.json")
        if meta["num_processes"] * meta["batch_size"] != self.config.batch_size * self.accelerator.num_processes:
            raise ValueError(
                f"{folder}: saved with a global micro batch of {meta['num_processes']}x{meta['batch_size']}, "
                f"now {self.accelerator.num_processes}x{self.config.batch_size}; the data position would not match"
            )
        weights = load_file(folder / "weights.safetensors", device=str(self.accelerator.device))
        _missing, unexpected = self.model.load_state_dict(weights, strict=False)
        wanted = set(self.model.state_dict()) if self.config.mode == "full" else set(trainable_state_dict(self.model))
        if unexpected or (wanted - set(weights)):
            raise ValueError(
                f"{folder}: weights do not match the model (unexpected {unexpected[:5]}, "
                f"missing {sorted(wanted - set(weights))[:5]})"
            )
        self.optimizer.load_state_dict(
            torch.load(folder / "optimizer.pt", map_location=self.accelerator.device, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        if self.ema is not None:
            ema_file = folder / "ema.safetensors"
            if ema_file.is_file():
                self.ema = load_file(ema_file, device=str(self.accelerator.device))
        rng = folder / f"rng-{self.accelerator.process_index}.pt"
        # Restored by train() right before the loop, after everything else that may draw numbers.
        self._pending_rng = torch.load(rng, weights_only=True) if rng.is_file() else None
        self.step = int(meta["step"])
        self.position = DataPosition(int(meta["epoch"]), int(meta["batch"]))

    # ------------------------------------------------------------------------------ logging

    def _open_metrics(self, resumed: bool) -> Path:
        path = self.out_dir / "metrics.csv"
        if not self.is_main:
            return path
        rows: list[dict[str, str]] = []
        if resumed and path.is_file():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    try:  # drop rows past the resume point, and a torn last line
                        if row.get("step") and int(row["step"]) <= self.step and None not in row.values():
                            rows.append(row)
                    except ValueError:
                        continue

        def write_rows(f: IO[str]) -> None:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(path, write_rows, newline="")
        self._prune_by_game(resumed)
        self.train_history = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
        self.eval_history = [(int(r["step"]), float(r["eval_loss"])) for r in rows if r.get("eval_loss")]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self._tb = None
        return path

    @property
    def by_game_path(self) -> Path:
        """``eval_by_game.jsonl``: one line per eval and game, when the eval set has several games."""
        return self.out_dir / "eval_by_game.jsonl"

    def _prune_by_game(self, resumed: bool) -> None:
        """Start the per-game log afresh, or on resume keep only the lines up to the resume step."""
        path = self.by_game_path
        if not resumed:
            path.unlink(missing_ok=True)
            return
        if not path.is_file():
            return
        kept: list[str] = []
        for line in path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= self.step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
        atomic_write(path, "".join(line + "\n" for line in kept))

    def _log_by_game(self, by_game: dict[str, dict[str, float]]) -> None:
        """Append this eval's per-game metrics to :attr:`by_game_path`, and show them."""
        if not self.is_main:
            return
        with open(self.by_game_path, "a") as f:
            for game, metrics in by_game.items():
                f.write(json.dumps({"step": self.step, "game": game, **metrics}) + "\n")
        parts = [f"{game} {m['first_action_acc']:.3f}" for game, m in by_game.items()]
        tqdm.write(f"eval step {self.step}: first-action accuracy by game: " + ", ".join(parts))
        if self._tb is not None:
            for game, metrics in by_game.items():
                for k, v in metrics.items():
                    self._tb.add_scalar(f"eval_by_game/{game}/{k}", v, self.step)

    def _log_row(self, path: Path, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRIC_COLUMNS).writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
            f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and v != "":
                    self._tb.add_scalar(k, v, row["step"])

    def run_eval(self) -> dict[str, Any] | None:
        """Evaluate the current weights on the main process (others wait)."""
        result = None
        if self.eval_dataset is not None and self.is_main:
            result = evaluate(
                self.model,
                self.eval_dataset,
                batch_size=self.config.batch_size,
                seed=self.config.seed,
                num_steps=self.config.eval_sample_steps,
                max_batches=self.config.eval_batches,
            )
            self.last_eval = result
            self.eval_history.append((self.step, result["loss"]))
            plot_curves(self.out_dir / "curves.png", self.train_history, self.eval_history)
        self.accelerator.wait_for_everyone()
        return result

    # ------------------------------------------------------------------------------ training

    def _ema_update(self) -> None:
        if self.ema is None:
            return
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.ema:
                    self.ema[n].lerp_(p.detach(), 1 - decay)

    def train(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (or stop after step ``stop_after``, to simulate an interruption).

        With ``resume``, continue from ``out_dir/checkpoints/latest`` when it exists.
        Returns a summary: ``step``, ``losses`` (this call's per-step losses), ``eval``, counts.
        """
        acc, cfg = self.accelerator, self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = None
        if resume and (folder := ckpt.latest_checkpoint(self.out_dir)) is not None:
            self.load_state(folder)
            resumed_from = self.step
        wrapper, optimizer = acc.prepare(LossModule(self.model), self.optimizer)
        sampler = ResumableBatchSampler(
            len(self.train_dataset),
            cfg.batch_size,
            seed=cfg.seed,
            num_replicas=acc.num_processes,
            rank=acc.process_index,
            start=self.position,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=acc.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed + self.step),
        )
        batches = iter(loader)
        metrics_path = self._open_metrics(resumed_from is not None)
        if self.is_main:
            # What this run is, beside its outputs: the config and what it started from.
            run_info = {
                "finetune_config": cfg.model_dump(mode="json"),
                "base_checkpoint": str(self.raw.path) if self.raw.path else self.raw.config.experiment_name,
                "num_processes": acc.num_processes,
                "train_windows": len(self.train_dataset),
                "eval_windows": len(self.eval_dataset) if self.eval_dataset is not None else 0,
            }
            atomic_write_json(self.out_dir / "run.json", run_info)
        mcfg = self.model.config.model_cfg
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not (cfg.progress and self.is_main),
            desc="finetune",
            dynamic_ncols=True,
        )
        if self._pending_rng is not None:
            ckpt.set_rng_state(self._pending_rng)
            self._pending_rng = None
        losses: list[tuple[int, float]] = []
        window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
        while self.step < cfg.max_steps and (stop_after is None or self.step < stop_after):
            micro_losses = []
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                epoch = self.position.epoch
                self.position.advance(sampler.batches_per_epoch)
                actions = batch["actions"]
                noise, t = sample_noise_and_time(
                    batch["index"],
                    tuple(actions.shape[1:]),
                    seed=cfg.seed,
                    epoch=epoch,
                    alpha=mcfg.noise_beta_alpha,
                    beta=mcfg.noise_beta_beta,
                    s=mcfg.noise_s,
                )
                # Items may bring their own flow noise and time (distillation targets, see .distill).
                noise, t = batch.get("noise", noise), batch.get("t", t)
                dev = acc.device
                with acc.accumulate(wrapper):
                    loss = wrapper(
                        batch["pixels"].to(dev),
                        batch["frame_valid"].to(dev),
                        actions.to(dev),
                        batch["action_mask"].to(dev) if "action_mask" in batch else None,
                        batch["game_ids"].to(dev) if "game_ids" in batch else None,
                        noise.to(dev),
                        t.to(dev),
                    )
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.grad_clip is not None:
                        acc.clip_grad_norm_(self.params, cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_losses.append(loss.detach().float())
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.step += 1
            self._ema_update()
            step_loss = float(acc.reduce(torch.stack(micro_losses).mean(), reduction="mean"))
            losses.append((self.step, step_loss))
            window_loss, window_steps = window_loss + step_loss, window_steps + 1
            elapsed = time.perf_counter() - window_t0
            sps = window_steps * self.global_batch / max(elapsed, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{sps:.1f}")
            last = self.step == cfg.max_steps
            do_eval = self.eval_dataset is not None and (last or (cfg.eval_every and self.step % cfg.eval_every == 0))
            if self.step % cfg.log_every == 0 or last or do_eval:
                row: dict[str, Any] = {
                    "step": self.step,
                    "epoch": epoch,
                    "loss": window_loss / window_steps,
                    "lr": lr,
                    "samples_per_s": sps,
                }
                self.train_history.append((self.step, row["loss"]))
                if do_eval and (result := self.run_eval()) is not None:
                    row.update({f"eval_{k}": v for k, v in result.items() if k not in ("num_samples", "by_game")})
                    if "by_game" in result:
                        self._log_by_game(result["by_game"])
                self._log_row(metrics_path, row)
                window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
            if last or (cfg.save_every and self.step % cfg.save_every == 0):
                self.save_state()
        bar.close()
        if self.is_main and self.train_history:
            plot_curves(self.out_dir / "curves.png", self.train_history, self.eval_history)
        if self._tb is not None:
            self._tb.close()
        acc.wait_for_everyone()
        return {
            "step": self.step,
            "resumed_from": resumed_from,
            "losses": losses,
            "final_loss": losses[-1][1] if losses else None,
            "eval": self.last_eval,
            "num_processes": acc.num_processes,
            "out_dir": str(self.out_dir),
            **self.param_counts,
        }

    # ------------------------------------------------------------------------------ export

    def export(self) -> dict[str, str]:
        """Write ``model.pt`` (merged, released layout; EMA weights when enabled), optionally
        ``model.safetensors``, and for LoRA ``adapter.safetensors`` + ``adapter_config.json``.

        The adapter file holds every trainable tensor: the ``lora_A/lora_B`` adapters and the base
        weights tuned in full (by default the action heads); ``adapter_config.json`` lists which.
        """
        paths: dict[str, str] = {}
        if self.is_main:
            model = copy.deepcopy(self.model).cpu().eval()
            if self.ema is not None:
                params = dict(model.named_parameters())
                with torch.no_grad():
                    for n, v in self.ema.items():
                        params[n].copy_(v)
            cfg = self.config
            if cfg.mode == "lora":
                tensors = trainable_state_dict(model)
                _save_tensors(tensors, self.out_dir / "adapter.safetensors")
                adapter_cfg = {
                    "format": "nitrogen-lora",
                    "rank": cfg.lora_rank,
                    "alpha": cfg.lora_alpha,
                    "dropout": cfg.lora_dropout,
                    "target_patterns": cfg.target_patterns(),
                    "lora_keys": sorted(k for k in tensors if is_lora_param(k)),
                    "full_keys": sorted(k for k in tensors if not is_lora_param(k)),
                    "base_checkpoint": str(self.raw.path) if self.raw.path else None,
                    "finetune_config": cfg.model_dump(mode="json"),
                }
                atomic_write_json(self.out_dir / "adapter_config.json", adapter_cfg)
                paths["adapter"] = str(self.out_dir / "adapter.safetensors")
            merged = merge_lora(model, inplace=True)
            state = merged.state_dict()
            paths["model"] = str(
                save_checkpoint(self.out_dir / "model.pt", state, self.raw.config, self.raw.game_mapping)
            )
            if cfg.export_safetensors:
                paths["safetensors"] = str(
                    save_checkpoint(self.out_dir / "model.safetensors", state, self.raw.config, self.raw.game_mapping)
                )
        self.accelerator.wait_for_everyone()
        return paths
