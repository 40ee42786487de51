"""The in-process inference session: frames in, gamepad action chunks out.

It holds a :class:`~nitrogen.inference.engine.PolicyEngine` (the loaded model), one frame history and the
sampling settings. Per frame the vision tower runs once and its features join the history; the
conditioning (mixer output and cross-attention keys/values) is built once; then the Euler steps run
over the action tokens only.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from typing import Any

import torch

from .engine import PolicyEngine, PredictRequest
from ..policy import ActionChunk


class InferenceSession:
    """A NitroGen policy running in this process. Implements :class:`nitrogen.Policy`."""

    def __init__(
        self,
        engine: PolicyEngine,
        *,
        game: str | int | None = None,
        cfg_scale: float = 1.0,
        context_length: int | None = None,
        seed: int | None = None,
    ):
        self.engine = engine
        self.model = engine.model
        self.config = engine.config
        self.device = engine.device
        self.game_id, self.game_name = engine.resolve_game(game)
        self.cfg_scale = float(cfg_scale)
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
        default_context = self.config.modality_cfg.frame_per_sample
        self.context_length = engine.check_context_length(
            int(default_context if context_length is None else context_length)
        )
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._history: deque[torch.Tensor] = deque(maxlen=self.context_length)
        self._lock = threading.Lock()
        self.num_predictions = 0

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        game: str | int | None = None,
        cfg_scale: float = 1.0,
        context_length: int | None = None,
        num_steps: int | None = None,
        seed: int | None = None,
        pack_weights: bool | None = None,
    ) -> InferenceSession:
        """Load a ``.pt`` (released format) or ``.safetensors`` checkpoint into a ready session.

        Precision: by default float32 weights under bfloat16 autocast on CUDA (the released recipe)
        and float32 on CPU; ``dtype="bfloat16"`` stores the weights in bfloat16 (the fast CPU path).
        ``pack_weights`` (default: on for CPU) keeps oneDNN pre-packed copies of the weights, which
        makes each Euler step about 1.4x (bf16) to 2x (fp32) faster on CPU.
        """
        engine = PolicyEngine.from_checkpoint(
            path, device=device, dtype=dtype, num_steps=num_steps, pack_weights=pack_weights
        )
        return cls(engine, game=game, cfg_scale=cfg_scale, context_length=context_length, seed=seed)

    @property
    def num_steps(self) -> int:
        return self.engine.num_steps

    @property
    def precision(self) -> str:
        return self.engine.precision

    def list_games(self) -> dict[str, int]:
        """The checkpoint's games by name -> id; ``""`` (id 0) is unconditional. Empty if none."""
        return self.engine.list_games()

    def predict(self, frame: Any, *, noise: Any = None) -> ActionChunk:
        """Predict the next action chunk from a uint8 RGB frame (``H x W x 3`` array or PIL image).

        ``noise`` optionally fixes the sampler's initial noise, an ``(H, 25)`` float array.
        """
        engine = self.engine
        with self._lock, torch.inference_mode(), engine.autocast():
            t0 = time.perf_counter()
            x0 = engine.noise(noise, self._generator)
            feats = engine.encode([engine.preprocess(frame)])[0]
            t1 = time.perf_counter()
            self._history.append(feats)
            request = PredictRequest(list(self._history), self.game_id, self.cfg_scale, x0)
            action = engine.sample([request])[0]
            t2 = time.perf_counter()
            self.num_predictions += 1
        timing = {"vision_ms": (t1 - t0) * 1e3, "sample_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}
        return ActionChunk.from_action_tensor(action, timing)

    def reset(self) -> None:
        """Clear the frame history (and nothing else)."""
        with self._lock:
            self._history.clear()

    def info(self) -> dict[str, Any]:
        return {
            **self.engine.info(),
            "game": self.game_name,
            "game_id": self.game_id,
            "cfg_scale": self.cfg_scale,
            "context_length": self.context_length,
            "frames_in_history": len(self._history),
            "num_predictions": self.num_predictions,
        }
