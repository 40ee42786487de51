"""Evaluation: the velocity loss at fixed noise and time, and action metrics of sampled chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..model.modeling import Conditioning, NitroGenModel
from .metrics import action_metrics
from .order import eval_noise, sample_noise_and_time


def _games(model: NitroGenModel, batch: dict[str, torch.Tensor], B: int) -> list[int | None]:
    if not model.has_games:
        return [None] * B
    ids = batch.get("game_ids")
    return [int(g) for g in ids.tolist()] if ids is not None else [0] * B


def batch_condition(model: NitroGenModel, batch: dict[str, torch.Tensor]) -> Conditioning:
    """The conditioning of a batch in the training format: its valid frames through the tower, one pass."""
    pixels, valid = batch["pixels"], batch["frame_valid"]
    B, F = valid.shape
    counts = valid.sum(dim=1).tolist()
    feats = model.encode_frames(pixels.reshape(B * F, *pixels.shape[2:])[valid.reshape(-1)])
    return model.condition(model.vl_tokens(list(torch.split(feats, counts)), _games(model, batch, B)))


@torch.no_grad()
def sample_actions(
    model: NitroGenModel, batch: dict[str, torch.Tensor], noise: torch.Tensor, num_steps: int
) -> torch.Tensor:
    """Sampled action chunks ``(B, H, A)`` for a batch, from ``noise`` (no guidance)."""
    return model.sample(batch_condition(model, batch), noise, num_steps)


def window_games(dataset: Dataset, indices: Sequence[int]) -> list[str | None]:
    """The game of each window ``indices`` of ``dataset``, through any :class:`~torch.utils.data.Subset`.

    Games come from the underlying dataset's ``window_game(i)`` (a
    :class:`~nitrogen.data.GameplayDataset` with a ``game`` column); None where it names none.
    """
    rows = [int(i) for i in indices]
    while isinstance(dataset, Subset):
        rows = [int(dataset.indices[i]) for i in rows]
        dataset = dataset.dataset
    name = getattr(dataset, "window_game", None)
    return [name(i) for i in rows] if name is not None else [None] * len(rows)


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` distinct indices in ``range(total)``, evenly spaced from the first to the last."""
    if count >= total:
        return list(range(total))
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


@torch.no_grad()
def evaluate(
    model: NitroGenModel,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    seed: int = 0,
    num_steps: int | None = None,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` (items in the training batch format), deterministically.

    Returns ``loss`` (masked velocity MSE at per-sample fixed noise and time), ``f1`` (macro button
    F1), ``stick_mae`` and ``first_action_acc`` of chunks sampled from fixed noise with
    ``num_steps`` Euler steps (default: the checkpoint's), and ``num_samples``.

    ``max_batches`` caps the work at ``max_batches * batch_size`` windows spread evenly over the
    whole eval set (see :func:`spread_indices`), so that every held-out episode and game is scored,
    not only the first one in the dataset's order.

    When the windows name their games (:func:`window_games`) and there are several, ``by_game``
    maps each game to its own ``f1``, ``stick_mae``, ``first_action_acc`` and ``num_samples``: one
    game's score can hide another's failure in the pooled numbers.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mcfg = model.config.model_cfg
    steps = num_steps or mcfg.num_inference_timesteps
    if max_batches is not None:
        dataset = Subset(dataset, spread_indices(len(dataset), max_batches * batch_size))
    games = window_games(dataset, range(len(dataset)))  # the loader reads the windows in this order
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    loss_sum, weight = 0.0, 0.0
    preds, targets, masks = [], [], []
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            actions = batch["actions"]
            _, Hh, A = actions.shape
            mask = batch.get("action_mask", torch.ones_like(actions))
            noise, t = sample_noise_and_time(
                batch["index"].cpu(),
                (Hh, A),
                seed=seed + 99_991,
                epoch=0,
                alpha=mcfg.noise_beta_alpha,
                beta=mcfg.noise_beta_beta,
                s=mcfg.noise_s,
            )
            loss = model.training_loss(
                batch["pixels"],
                batch["frame_valid"],
                actions,
                action_mask=mask,
                game_ids=batch.get("game_ids"),
                noise=noise.to(device),
                t=t.to(device),
            )
            w = float(mask.sum())
            loss_sum, weight = loss_sum + float(loss) * w, weight + w
            x0 = eval_noise(batch["index"].cpu(), (Hh, A), seed).to(device)
            preds.append(sample_actions(model, batch, x0, steps).float().cpu().numpy())
            targets.append(actions.float().cpu().numpy())
            masks.append(mask.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not preds:
        raise ValueError("the eval set yielded no batches")
    pred, target, mask_np = np.concatenate(preds), np.concatenate(targets), np.concatenate(masks)
    out: dict[str, Any] = {"loss": loss_sum / max(weight, 1e-6), **action_metrics(pred, target, mask_np)}
    out["num_samples"] = float(len(pred))
    named = sorted({g for g in games if g is not None})
    if len(named) > 1:
        labels = np.asarray([g if g is not None else "" for g in games])
        out["by_game"] = {}
        for game in named:
            rows = labels == game
            metrics = action_metrics(pred[rows], target[rows], mask_np[rows])
            out["by_game"][game] = {**metrics, "num_samples": float(rows.sum())}
    return out
