"""Per-history inference state: what one stream of frames remembers between predictions.

An :class:`~nitrogen.inference.session.InferenceSession` holds one :class:`FrameHistory`; the
server holds one per client. :meth:`nitrogen.inference.engine.PolicyEngine.predict_batch` appends
to them and reads their settings; nothing else touches the features.
"""

from __future__ import annotations

import math
from collections import deque

import torch

MAX_CFG_SCALE = 100.0
"""The largest CFG scale magnitude: guidance far beyond it only drives the sampler to overflow."""


class FrameHistory:
    """The vision features of the last ``context_length`` frames (oldest first) of one stream of
    frames, with that stream's sampling settings.

    ``features`` holds one ``(P, D)`` tensor per frame (the tower's tokens). ``game_id`` /
    ``game_name`` are the game the conditional branch sees (``None``: a checkpoint without games);
    ``cfg_scale`` 1.0 is no guidance, and its magnitude is at most :data:`MAX_CFG_SCALE`. ``generator`` draws the initial noise when a request brings
    none (``None``: torch's global generator); it is seeded from ``seed`` and is not reset by
    :meth:`clear`. ``predictions`` counts the predictions made for this history.
    """

    def __init__(
        self,
        context_length: int,
        *,
        game_id: int | None = None,
        game_name: str | None = None,
        cfg_scale: float = 1.0,
        seed: int | None = None,
    ):
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1 frame, got {context_length}")
        self.features: deque[torch.Tensor] = deque(maxlen=int(context_length))
        self.game_id = game_id
        self.game_name = game_name
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.predictions = 0

    @property
    def cfg_scale(self) -> float:
        return self._cfg_scale

    @cfg_scale.setter
    def cfg_scale(self, value: float) -> None:
        self._cfg_scale = self.check_cfg_scale(value)

    @staticmethod
    def check_cfg_scale(value: float) -> float:
        """``value`` as a float if it is a valid CFG scale (finite, magnitude at most :data:`MAX_CFG_SCALE`)."""
        scale = float(value)
        if not math.isfinite(scale) or abs(scale) > MAX_CFG_SCALE:
            raise ValueError(f"cfg_scale must be a finite number from -{MAX_CFG_SCALE:g} to {MAX_CFG_SCALE:g}")
        return scale

    @property
    def context_length(self) -> int:
        assert self.features.maxlen is not None
        return self.features.maxlen

    def __len__(self) -> int:
        """Frames in the history now (at most ``context_length``)."""
        return len(self.features)

    def append(self, features: torch.Tensor) -> None:
        """Add the newest frame's ``(P, D)`` tokens; the oldest goes once the history is full."""
        self.features.append(features)

    def clear(self) -> None:
        """Forget the frames (start of an episode); settings, generator and count stay."""
        self.features.clear()
