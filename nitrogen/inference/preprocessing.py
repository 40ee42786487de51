"""Frame validation and preprocessing, as in the released pipeline: the one owner of both.

:func:`as_rgb_frame` is the one frame check, with the one :data:`MAX_FRAME_SIDE`: the light client
runs it before sending, an engine (in-process session or server) before the tower. A game frame of
any size is then squashed once, without keeping the aspect ratio, to the tower's input size with
OpenCV ``INTER_AREA`` (:func:`resize_frame`), scaled to ``x / 255`` and normalised to
``(x - 0.5) / 0.5`` (:func:`to_pixels`).

Importing this module needs only numpy, so the light client can use it without torch: OpenCV is
imported inside :func:`resize_frame` and torch inside :func:`to_pixels` and :func:`preprocess`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MAX_FRAME_SIDE = 8192
"""The largest frame side, in pixels, anywhere: in-process, on the wire and in the client."""


def _to_array(frame: Any) -> np.ndarray:
    """An ndarray, a PIL(-like) image (anything with ``.convert``) or an array-like as an ndarray."""
    if isinstance(frame, np.ndarray):
        return frame
    if hasattr(frame, "convert"):  # PIL images, without importing PIL
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, (list, tuple)) or hasattr(frame, "__array__") or hasattr(frame, "__array_interface__"):
        return np.asarray(frame)
    raise ValueError(f"frame must be a uint8 HxWx3 RGB numpy array or a PIL image, got {type(frame).__name__}")


def as_rgb_frame(frame: Any) -> np.ndarray:
    """Validate a frame and return it as a contiguous uint8 ``(H, W, 3)`` RGB array.

    Accepts a numpy array (or array-like) or a PIL image. Anything else, or a frame of the wrong
    dtype, shape or size (a side of 0 or over :data:`MAX_FRAME_SIDE`), raises a ``ValueError`` that
    says what was expected.
    """
    frame = _to_array(frame)
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
    import cv2

    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def to_pixels(frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 ``(N, S, S, 3)`` frames -> float32 ``(N, 3, S, S)`` in [-1, 1]."""
    import torch

    batch = torch.from_numpy(np.stack(frames) if isinstance(frames, list) else frames)
    x = batch.permute(0, 3, 1, 2).float() / 255.0  # NHWC -> NCHW, [0, 1]
    return (x - 0.5) / 0.5


def preprocess(frame: Any, size: int) -> torch.Tensor:
    """One frame of any size -> ``(1, 3, size, size)`` model input."""
    return to_pixels(resize_frame(as_rgb_frame(frame), size)[None])
