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
    """Write train (blue) and eval (red) loss vs step to ``path`` atomically; returns the path.

    The loss axis is logarithmic when every value is positive and they span more than a factor of 10,
    so the slow late part of a run stays readable next to its steep start.
    """
    W, H = size
    left, right, top, bottom = 70, 20, 30, 50
    img = np.full((H, W, 3), 255, np.uint8)
    pts = [(s, v) for s, v in [*train, *evals] if math.isfinite(v)]
    x0, y0, x1, y1 = left, top, W - right, H - bottom
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    if pts:
        smin, smax = min(p[0] for p in pts), max(p[0] for p in pts)
        vmin, vmax = min(p[1] for p in pts), max(p[1] for p in pts)
        log = vmin > 0 and vmax / vmin > 10
        scale = math.log10 if log else float
        lo, hi = scale(vmin), scale(vmax)
        smax, hi = (smax if smax > smin else smin + 1), (hi if hi > lo else lo + 1e-6)

        def xy(s: float, v: float) -> tuple[int, int]:
            return (int(x0 + (s - smin) / (smax - smin) * (x1 - x0)), int(y1 - (scale(v) - lo) / (hi - lo) * (y1 - y0)))

        for series, color in ((train, (200, 80, 0)), (evals, (0, 0, 220))):
            line = [xy(s, v) for s, v in series if math.isfinite(v)]
            if len(line) > 1:
                cv2.polylines(img, [np.array(line, np.int32)], False, color, 2, cv2.LINE_AA)
            for p in line if len(line) <= 1 or series is evals else ():
                cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        font = cv2.FONT_HERSHEY_SIMPLEX
        ticks = [vmax, vmin]
        if log:  # the powers of ten in between, as dotted gridlines
            ticks += [10.0**k for k in range(math.ceil(lo), math.floor(hi) + 1) if vmin < 10.0**k < vmax]
            ticks = [v for v in ticks if v in (vmax, vmin) or y0 + 15 < xy(smin, v)[1] < y1 - 15]
        for v in ticks:
            y = xy(smin, v)[1]
            if v not in (vmax, vmin):
                for x in range(x0, x1, 8):
                    cv2.line(img, (x, y), (x + 2, y), (180, 180, 180), 1)
            cv2.putText(img, f"{v:.3g}", (5, y + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        if log:
            cv2.putText(img, "log scale", (x1 - 80, 20), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
        for s, x in ((smin, x0), (smax, x1 - 8 * len(str(int(smax))))):
            cv2.putText(img, str(int(s)), (x, y1 + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "step", ((x0 + x1) // 2 - 15, H - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "train loss", (x0 + 10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 80, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "eval loss", (x0 + 120, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 220), 1, cv2.LINE_AA)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"cv2 could not write {tmp}")
    os.replace(tmp, path)
    return path
