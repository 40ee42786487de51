"""Action metrics on packed ``(N, H, 25)`` chunks in ``[0, 1]`` (see :mod:`nitrogen.actions`).

* Per-button F1 at threshold 0.5, macro-averaged over the buttons that *appear* (pressed in the
  targets or in the predictions); a button never pressed and never predicted has no defined F1 and
  is left out. If no button appears at all, every prediction is a correct "not pressed": 1.0.
* Stick MAE in ``[-1, 1]`` units (``2x - 1``, clamped like the decoder).
* First-action accuracy: the fraction of samples whose 21 buttons of action 0 are all right.
"""

from __future__ import annotations

import numpy as np

from ..actions import BUTTON_SLICE, BUTTON_THRESHOLD, NUM_BUTTONS

STICK_SLICE = slice(NUM_BUTTONS, NUM_BUTTONS + 4)


def button_f1(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Macro F1 over the buttons that appear, and the per-button F1 (NaN where undefined).

    ``pred``/``target`` ``(..., 25)`` (or ``(..., 21)``); ``mask`` of the same shape selects the
    entries that count (e.g. the dataset's ``action_mask``).
    """
    p = pred[..., BUTTON_SLICE].reshape(-1, NUM_BUTTONS) > BUTTON_THRESHOLD
    t = target[..., BUTTON_SLICE].reshape(-1, NUM_BUTTONS) > BUTTON_THRESHOLD
    m = np.ones_like(p) if mask is None else mask[..., BUTTON_SLICE].reshape(-1, NUM_BUTTONS) > 0
    tp = (p & t & m).sum(0).astype(np.float64)
    fp = (p & ~t & m).sum(0).astype(np.float64)
    fn = (~p & t & m).sum(0).astype(np.float64)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        per_button = np.where(denom > 0, 2 * tp / denom, np.nan)
    appear = denom > 0
    macro = float(per_button[appear].mean()) if appear.any() else 1.0
    return macro, per_button


def stick_mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute stick error in ``[-1, 1]`` units over the (masked) stick entries."""
    p = np.clip(pred[..., STICK_SLICE] * 2 - 1, -1, 1)
    t = np.clip(target[..., STICK_SLICE] * 2 - 1, -1, 1)
    err = np.abs(p - t)
    if mask is None:
        return float(err.mean())
    m = mask[..., STICK_SLICE] > 0
    return float(err[m].mean()) if m.any() else 0.0


def first_action_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction of samples ``(N, H, 25)`` whose 21 buttons at action 0 all match the target."""
    p = pred[:, 0, BUTTON_SLICE] > BUTTON_THRESHOLD
    t = target[:, 0, BUTTON_SLICE] > BUTTON_THRESHOLD
    return float((p == t).all(axis=-1).mean())


def action_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """All three metrics: ``f1``, ``stick_mae``, ``first_action_acc``."""
    return {
        "f1": button_f1(pred, target, mask)[0],
        "stick_mae": stick_mae(pred, target, mask),
        "first_action_acc": first_action_accuracy(pred, target),
    }
