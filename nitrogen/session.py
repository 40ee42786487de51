"""The inference session: frames in, gamepad action chunks out.

It owns a loaded model, the frame history and the sampling settings. Per frame it runs the vision
tower once, keeps the features in the history, builds the conditioning (mixer output and
cross-attention keys/values) once, and then runs the Euler steps over the action tokens only.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from .actions import ACTION_DIM, BUTTONS, layout_description
from .checkpoint import RawCheckpoint, load_model
from .cpu_kernels import pack_linears, packing_available
from .modeling import Conditioning, NitroGenModel, Schedule
from .policy import ActionChunk
from .preprocessing import preprocess

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use one of float32, bfloat16, float16")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


class InferenceSession:
    """A NitroGen policy running in this process. Implements :class:`nitrogen.Policy`.

    Precision: by default, on CUDA the weights stay float32 and run under bfloat16 autocast (the
    released recipe); on CPU everything is float32. ``dtype="bfloat16"`` (or float16) stores the
    weights in that type instead, which halves memory and is the fast path on CPU. The sampled
    actions are always accumulated in float32.
    """

    def __init__(
        self,
        model: NitroGenModel,
        checkpoint: RawCheckpoint,
        *,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        game: str | int | None = None,
        cfg_scale: float = 1.0,
        context_length: int | None = None,
        num_steps: int | None = None,
        seed: int | None = None,
        pack_weights: bool | None = None,
    ):
        self.model = model
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.device = device
        self.autocast_dtype = autocast_dtype
        mcfg, tcfg = self.config.model_cfg, self.config.tokenizer_cfg
        if mcfg.action_dim != ACTION_DIM:
            raise ValueError(f"checkpoint predicts {mcfg.action_dim} action dims; the gamepad layout has {ACTION_DIM}")
        self.game_mapping = checkpoint.game_mapping
        self.game_id, self.game_name = self._resolve_game(game)
        self.cfg_scale = float(cfg_scale)
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
        self.context_length = int(
            self.config.modality_cfg.frame_per_sample if context_length is None else context_length
        )
        if self.context_length < 1:
            raise ValueError(f"context_length must be at least 1 frame, got {self.context_length}")
        tokens = self.context_length * model.vision_spec.tokens_per_frame + int(model.has_games)
        if tokens > tcfg.max_sequence_length:
            raise ValueError(
                f"context_length={self.context_length} needs {tokens} VL tokens, but this checkpoint allows "
                f"{tcfg.max_sequence_length} ({model.vision_spec.tokens_per_frame} per frame"
                f"{' + 1 game token' if model.has_games else ''})"
            )
        self.num_steps = int(mcfg.num_inference_timesteps if num_steps is None else num_steps)
        if not 1 <= self.num_steps <= mcfg.num_timestep_buckets:
            raise ValueError(f"num_steps must be in 1..{mcfg.num_timestep_buckets}, got {self.num_steps}")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._history: deque[torch.Tensor] = deque(maxlen=self.context_length)
        self._schedule: Schedule | None = None
        self._lock = threading.Lock()
        self.num_predictions = 0
        self.packed_layers = self._pack(pack_weights)

    # ------------------------------------------------------------------------------ construction

    def _pack(self, pack_weights: bool | None) -> int:
        """Pre-pack weights for oneDNN on CPU (see :mod:`nitrogen.cpu_kernels`); returns the layer count.

        The denoiser's matmuls (18 rows per step) gain the most, so they are always packed. In
        reduced precision the vision tower and the mixer (256 rows) are packed too, for about 10%
        more; that keeps a second copy of their weights (about 0.6 GB in bfloat16).
        """
        weight_dtype = next(self.model.parameters()).dtype
        if pack_weights is None:
            pack_weights = self.autocast_dtype is None and packing_available(self.device, weight_dtype)
        if not pack_weights:
            return 0
        m = self.model
        rows = self.config.model_cfg.action_horizon
        count = sum(pack_linears(part, rows) for part in (m.model, m.action_encoder, m.action_decoder))
        if weight_dtype != torch.float32:
            tokens = m.vision_spec.tokens_per_frame
            count += pack_linears(m.vision_encoder, tokens) + pack_linears(m.vl_self_attention_model, tokens)
        return count

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

        ``pack_weights`` (default: on for CPU) keeps a oneDNN pre-packed copy of the denoiser's
        weights, which makes each Euler step about 1.4x (bf16) to 2x (fp32) faster on CPU.
        """
        dev = resolve_device(device)
        weight_dtype = resolve_dtype(dtype)
        autocast = torch.bfloat16 if (weight_dtype is None and dev.type == "cuda") else None
        model, raw = load_model(path, device=dev, dtype=weight_dtype)
        return cls(
            model,
            raw,
            device=dev,
            autocast_dtype=autocast,
            game=game,
            cfg_scale=cfg_scale,
            context_length=context_length,
            num_steps=num_steps,
            seed=seed,
            pack_weights=pack_weights,
        )

    def _resolve_game(self, game: str | int | None) -> tuple[int | None, str | None]:
        if game is None:
            return (0, "") if self.game_mapping else (None, None)
        if not self.game_mapping:
            raise ValueError(f"game {game!r} was given, but this checkpoint has no game mapping")
        if isinstance(game, str) and game in self.game_mapping:
            return self.game_mapping[game], game
        if isinstance(game, int) or (isinstance(game, str) and game.isdigit()):
            by_id = {v: k for k, v in self.game_mapping.items()}
            if int(game) in by_id:
                return int(game), by_id[int(game)]
        raise ValueError(f"unknown game {game!r}; known games: {self.list_games()}")

    def list_games(self) -> dict[str, int]:
        """The checkpoint's games by name -> id; ``""`` (id 0) is unconditional. Empty if none."""
        return dict(sorted((self.game_mapping or {}).items(), key=lambda kv: kv[1]))

    # ---------------------------------------------------------------------------------- policy

    @property
    def precision(self) -> str:
        weights = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return f"{weights} weights" + (
            f", {str(self.autocast_dtype).removeprefix('torch.')} autocast" if self.autocast_dtype else ""
        )

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _noise(self, noise: Any) -> torch.Tensor:
        H = self.config.model_cfg.action_horizon
        if noise is None:
            return torch.randn(1, H, ACTION_DIM, generator=self._generator).to(self.device)
        arr = np.asarray(noise)
        if arr.shape != (H, ACTION_DIM):
            raise ValueError(f"noise must have shape ({H}, {ACTION_DIM}), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError("noise must be finite floating-point values")
        return torch.from_numpy(arr.astype(np.float32))[None].to(self.device)

    def schedule(self) -> Schedule:
        if self._schedule is None:
            self._schedule = self.model.model.schedule(self.model.step_buckets(self.num_steps, self.device))
        return self._schedule

    def encode(self, frame: Any) -> torch.Tensor:
        """One frame of any size -> its vision tokens ``(P, D)``."""
        pixels = preprocess(frame, self.model.vision_spec.image_size).to(self.device)
        return self.model.encode_frames(pixels)[0]

    def conditioning(self, history: list[torch.Tensor]) -> tuple[Conditioning, Conditioning | None]:
        """The conditional context (whole history + game) and, with CFG, the unconditional one
        (newest frame only, no game token), computed together in one mixer pass."""
        if self.cfg_scale == 1.0:
            return self.model.condition(self.model.vl_tokens([torch.stack(history)], [self.game_id])), None
        tokens = self.model.vl_tokens([torch.stack(history), history[-1][None]], [self.game_id, None])
        both = self.model.condition(tokens)
        cond = Conditioning({i: (k[:1], v[:1]) for i, (k, v) in both.kv.items()})
        uncond = Conditioning({i: (k[1:], v[1:]) for i, (k, v) in both.kv.items()})
        return cond, uncond

    def predict(self, frame: Any, *, noise: Any = None) -> ActionChunk:
        """Predict the next action chunk from a uint8 RGB frame (``H x W x 3`` array or PIL image).

        ``noise`` optionally fixes the sampler's initial noise, an ``(H, 25)`` float array.
        """
        with self._lock, torch.inference_mode(), self._autocast():
            t0 = time.perf_counter()
            x0 = self._noise(noise)
            feats = self.encode(frame)
            t1 = time.perf_counter()
            self._history.append(feats)
            cond, uncond = self.conditioning(list(self._history))
            t2 = time.perf_counter()
            actions = self.model.sample(cond, x0, self.num_steps, uncond, self.cfg_scale, self.schedule())
            action = actions[0].float().cpu().numpy()
            t3 = time.perf_counter()
            self.num_predictions += 1
        timing = {
            "vision_ms": (t1 - t0) * 1e3,
            "context_ms": (t2 - t1) * 1e3,
            "sample_ms": (t3 - t2) * 1e3,
            "total_ms": (t3 - t0) * 1e3,
        }
        return ActionChunk.from_action_tensor(action, timing)

    def reset(self) -> None:
        """Clear the frame history (and nothing else)."""
        with self._lock:
            self._history.clear()

    def info(self) -> dict[str, Any]:
        mcfg = self.config.model_cfg
        return {
            "checkpoint": str(self.checkpoint.path) if self.checkpoint.path else None,
            "experiment_name": self.config.experiment_name,
            "vision_encoder": mcfg.vision_encoder_name,
            "device": str(self.device),
            "precision": self.precision,
            "packed_layers": self.packed_layers,
            "game": self.game_name,
            "game_id": self.game_id,
            "games": self.list_games(),
            "num_steps": self.num_steps,
            "cfg_scale": self.cfg_scale,
            "context_length": self.context_length,
            "frames_in_history": len(self._history),
            "action_horizon": mcfg.action_horizon,
            "action_shift": self.config.modality_cfg.action_shift,
            "action_dim": ACTION_DIM,
            "buttons": list(BUTTONS),
            "action_layout": layout_description(),
            "image_size": self.model.vision_spec.image_size,
            "num_predictions": self.num_predictions,
        }
