"""The in-process inference session: frames in, gamepad action chunks out.

It holds a :class:`~nitrogen.inference.engine.PolicyEngine` (the loaded model) and one
:class:`~nitrogen.inference.history.FrameHistory` (frames and sampling settings), and predicts
through :meth:`PolicyEngine.predict_batch` with a batch of one, the same path the server takes. Per
frame the vision tower runs once and its features join the history; the conditioning (mixer output
and cross-attention keys/values) is built once; then the Euler steps run over the action tokens only.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import Any

import torch

from ..actions import DEFAULT_BUTTON_ORDER
from ..policy import ActionChunk, PolicySpec
from .engine import FrameRequest, PolicyEngine
from .history import FrameHistory


class InferenceSession:
    """A NitroGen policy running in this process. Implements :class:`nitrogen.Policy`.

    ``history`` is its :class:`~nitrogen.inference.history.FrameHistory`; ``game_id``,
    ``game_name``, ``cfg_scale`` and ``num_predictions`` read (and the first three set) it.
    """

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
        game_id, game_name = engine.resolve_game(game)
        default_context = self.config.modality_cfg.frame_per_sample
        self.context_length = engine.check_context_length(
            int(default_context if context_length is None else context_length)
        )
        self.seed = seed
        self.history = FrameHistory(
            self.context_length, game_id=game_id, game_name=game_name, cfg_scale=cfg_scale, seed=seed
        )
        self._lock = threading.Lock()
        self._closed = False

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
        button_order: str = DEFAULT_BUTTON_ORDER,
    ) -> InferenceSession:
        """Load a ``.pt`` (released format) or ``.safetensors`` checkpoint into a ready session.

        Precision: by default float32 weights under bfloat16 autocast on CUDA (the released recipe)
        and float32 on CPU; ``dtype="bfloat16"`` stores the weights in bfloat16 (the fast CPU path).
        ``pack_weights`` (default: on for CPU) keeps oneDNN pre-packed copies of the weights, which
        makes each Euler step about 1.4x (bf16) to 2x (fp32) faster on CPU.
        """
        engine = PolicyEngine.from_checkpoint(
            path, device=device, dtype=dtype, num_steps=num_steps, pack_weights=pack_weights, button_order=button_order
        )
        return cls(engine, game=game, cfg_scale=cfg_scale, context_length=context_length, seed=seed)

    @property
    def game_id(self) -> int | None:
        return self.history.game_id

    @game_id.setter
    def game_id(self, value: int | None) -> None:
        self.history.game_id = value

    @property
    def game_name(self) -> str | None:
        return self.history.game_name

    @game_name.setter
    def game_name(self, value: str | None) -> None:
        self.history.game_name = value

    @property
    def cfg_scale(self) -> float:
        return self.history.cfg_scale

    @cfg_scale.setter
    def cfg_scale(self, value: float) -> None:
        self.history.cfg_scale = value

    @property
    def num_predictions(self) -> int:
        return self.history.predictions

    @cached_property
    def spec(self) -> PolicySpec:
        """What this policy is (horizon, action shift, frame size, step rate, buttons, games), from the engine."""
        return PolicySpec.from_info(self.engine.info())

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def num_steps(self) -> int:
        return self.engine.num_steps

    @property
    def precision(self) -> str:
        return self.engine.precision

    def list_games(self) -> dict[str, int]:
        """The checkpoint's games by name -> id; ``""`` (id 0) is unconditional. Empty if none."""
        return self.engine.list_games()

    def predict(
        self,
        frame: Any,
        *,
        noise: Any = None,
        prefix: Any = None,
        delay: int | None = None,
        chunking: str = "rtc",
        beta: float | None = None,
    ) -> ActionChunk:
        """Predict the next action chunk from a uint8 RGB frame (``H x W x 3`` array or PIL image).

        ``noise`` optionally fixes the sampler's initial noise, an ``(H, 25)`` float array. A bad
        frame or noise raises ``ValueError`` and leaves the history as it was. ``timing_ms`` holds
        ``vision_ms``, ``sample_ms`` and ``total_ms``.

        Real-time chunking: ``prefix`` is the previous chunk's actions on this chunk's time grid,
        ``(k, 25)``, and ``delay`` the ``d`` actions that run before this chunk arrives; they come
        back exactly. ``chunking="rtc"`` guides the rest of the overlap towards the prefix (soft
        mask, guidance capped at ``beta``, default 5 as in Black et al. 2025); ``"prefix"`` only
        replaces the frozen actions (cheaper). See :meth:`PolicyEngine.chunk_prefix`.
        """
        request = FrameRequest(self.history, frame, noise, prefix=prefix, delay=delay, chunking=chunking, beta=beta)
        with self._lock:
            if self._closed:
                raise RuntimeError("this InferenceSession is closed; load a new one to predict")
            result = self.engine.predict_batch([request])
        error, action = result.errors[0], result.actions[0]
        if error is not None:
            raise error
        assert action is not None
        timing = {"vision_ms": result.vision_ms, "sample_ms": result.sample_ms, "total_ms": result.total_ms}
        return ActionChunk.from_action_tensor(action, timing)

    def reset(self) -> None:
        """Clear the frame history (and nothing else)."""
        with self._lock:
            self.history.clear()

    def close(self) -> None:
        """Forget the history and refuse further predictions (``RuntimeError``); safe to call twice.

        ``info()`` and ``spec`` still answer. The engine may be shared, so its model is freed only
        when the last reference to it goes.
        """
        with self._lock:
            self._closed = True
            self.history.clear()

    def info(self) -> dict[str, Any]:
        return {
            **self.engine.info(),
            "game": self.game_name,
            "game_id": self.game_id,
            "cfg_scale": self.cfg_scale,
            "context_length": self.context_length,
            "frames_in_history": len(self.history),
            "num_predictions": self.num_predictions,
        }
