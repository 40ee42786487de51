"""A loss-curve PNG drawn with OpenCV (no plotting library needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

Series = Sequence[tuple[int, float]]


def plot_curves(
    path: str | os.PathLike[str], train: Series, evals: Series = (), size: tuple[int, int] = (800, 480)
) -> Path:
    """Write train (blue) and eval (red) loss vs step to ``path`` atomically; returns the path."""
    W, H = size
    left, right, top, bottom = 70, 20, 30, 50
    img = np.full((H, W, 3), 255, np.uint8)
    pts = [(s, v) for s, v in [*train, *evals] if math.isfinite(v)]
    x0, y0, x1, y1 = left, top, W - right, H - bottom
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    if pts:
        smin, smax = min(p[0] for p in pts), max(p[0] for p in pts)
        vmin, vmax = min(p[1] for p in pts), max(p[1] for p in pts)
        smax, vmax = (smax if smax > smin else smin + 1), (vmax if vmax > vmin else vmin + 1e-6)

        def xy(s: float, v: float) -> tuple[int, int]:
            return (int(x0 + (s - smin) / (smax - smin) * (x1 - x0)), int(y1 - (v - vmin) / (vmax - vmin) * (y1 - y0)))

        for series, color in ((train, (200, 80, 0)), (evals, (0, 0, 220))):
            line = [xy(s, v) for s, v in series if math.isfinite(v)]
            if len(line) > 1:
                cv2.polylines(img, [np.array(line, np.int32)], False, color, 2, cv2.LINE_AA)
            for p in line if len(line) <= 1 or series is evals else ():
                cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        font = cv2.FONT_HERSHEY_SIMPLEX
        for v, y in ((vmax, y0), (vmin, y1)):
            cv2.putText(img, f"{v:.3g}", (5, y + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for s, x in ((smin, x0), (smax, x1)):
            cv2.putText(img, str(int(s)), (x - 10, y1 + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "step", ((x0 + x1) // 2 - 15, H - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "train loss", (x0 + 10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 80, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "eval loss", (x0 + 120, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 220), 1, cv2.LINE_AA)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"cv2 could not write {tmp}")
    os.replace(tmp, path)
    return path
