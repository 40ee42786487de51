"""Frame validation and preprocessing, as in the released pipeline.

A game frame of any size is squashed, without keeping the aspect ratio, to the tower's input size
with OpenCV ``INTER_AREA``, then scaled to ``x / 255`` and normalised to ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

MAX_FRAME_SIDE = 8192


def as_rgb_frame(frame: Any) -> np.ndarray:
    """Validate a frame and return it as a contiguous uint8 ``(H, W, 3)`` RGB array.

    Accepts a numpy array or a PIL image. Anything else, or a frame of the wrong dtype, shape or
    size, raises a ``ValueError`` that says what was expected.
    """
    if not isinstance(frame, np.ndarray):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a dependency
            Image = None  # type: ignore[assignment]
        if Image is not None and isinstance(frame, Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        else:
            raise ValueError(f"frame must be a uint8 HxWx3 RGB numpy array or a PIL image, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        hint = " (NaN values present)" if np.issubdtype(frame.dtype, np.floating) and np.isnan(frame).any() else ""
        raise ValueError(f"frame must have dtype uint8 with values 0..255, got {frame.dtype}{hint}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must have shape (H, W, 3) RGB, got {frame.shape}")
    h, w = frame.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    if h > MAX_FRAME_SIDE or w > MAX_FRAME_SIDE:
        raise ValueError(f"frame of {w}x{h} exceeds the {MAX_FRAME_SIDE}-pixel limit per side")
    return np.ascontiguousarray(frame)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Squash an RGB frame to ``size x size`` with ``INTER_AREA`` (no-op when already that size)."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def to_pixels(frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 ``(N, S, S, 3)`` frames -> float32 ``(N, 3, S, S)`` in [-1, 1]."""
    batch = torch.from_numpy(np.stack(frames) if isinstance(frames, list) else frames)
    x = batch.permute(0, 3, 1, 2).float() / 255.0  # NHWC -> NCHW, [0, 1]
    return (x - 0.5) / 0.5


def preprocess(frame: Any, size: int) -> torch.Tensor:
    """One frame of any size -> ``(1, 3, size, size)`` model input."""
    return to_pixels(resize_frame(as_rgb_frame(frame), size)[None])
