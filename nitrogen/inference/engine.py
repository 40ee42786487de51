"""The prediction engine: one loaded model that predicts for many independent frame histories.

Each history is a :class:`~nitrogen.inference.history.FrameHistory`. :meth:`PolicyEngine.predict_batch`
is the one inference path: :class:`~nitrogen.inference.session.InferenceSession` calls it with a
batch of one, the server with one request per client. Per batch it validates and squashes every
frame, runs the vision tower once over all of them, appends each frame's tokens to its history,
then samples once: the VL mixer runs once over every sample's conditional and unconditional (CFG)
tokens, and each Euler step is one DiT pass over all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..actions import ACTION_DIM, BUTTONS, DEFAULT_BUTTON_ORDER, layout_description
from ..gamepad import check_button_order, reorder_buttons
from ..model.checkpoint import RawCheckpoint, load_model
from ..model.modeling import RTC_BETA, Conditioning, NitroGenModel, PrefixGuide, Schedule
from ..policy import CHUNKING_MODES, MAX_PREFIX_ABS, MAX_RTC_BETA
from .cpu_kernels import pack_linears, packing_available
from .history import FrameHistory
from .preprocessing import as_rgb_frame, resize_frame, to_pixels

STEP_RATE_HZ = 60.0
"""NitroGen acts once per frame of a 60 Hz game: action ``k`` of a chunk is for frame ``t + shift + k``."""

MAX_NOISE_ABS = 1e4
"""The largest magnitude of a value of caller-given initial noise (a standard normal draw stays under 10)."""


_GENERIC_STEMS = frozenset({"model", "checkpoint", "ckpt", "weights", "best", "last", "final"})

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


def checkpoint_name(path: str | os.PathLike[str] | None, fallback: str = "nitrogen") -> str:
    """A readable name for a checkpoint file: its stem (``ng.pt`` -> ``ng``), or, for a generic file
    name such as ``model.pt``, its folder and file name (``runs/gopher/model.pt`` -> ``gopher/model.pt``)."""
    if path is None:
        return fallback
    p = Path(path)
    if p.stem.lower() in _GENERIC_STEMS and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.stem


@dataclass
class PredictRequest:
    """One sample of :meth:`PolicyEngine.sample`: a history's vision tokens (oldest first, newest
    included), its game, its CFG scale and its initial noise."""

    history: Sequence[torch.Tensor]
    game_id: int | None
    cfg_scale: float
    noise: torch.Tensor  # (H, A) float32
    prefix: ChunkPrefix | None = None


@dataclass(frozen=True)
class ChunkPrefix:
    """What real-time chunking conditions a new chunk on (validated by :meth:`PolicyEngine.chunk_prefix`).

    ``actions (k, 25)`` float32: the previous chunk's actions on the new chunk's time grid (row
    ``j`` is for the frame of the new chunk's action ``j``), ``1 <= k <= H``. ``delay`` ``d``
    (``0 <= d <= k``): the actions that run before the new chunk arrives; they come back exactly
    as given. ``mode``: ``rtc`` (guided, soft mask over the rest of the overlap, weight capped at
    ``beta``; the paper's default beta is 5) or ``prefix`` (hard replacement of the ``d`` frozen
    actions only).
    """

    actions: torch.Tensor
    delay: int
    mode: str = "rtc"
    beta: float = RTC_BETA


@dataclass
class FrameRequest:
    """One request of :meth:`PolicyEngine.predict_batch`: a new frame for a history.

    ``frame`` is anything :func:`~nitrogen.inference.preprocessing.as_rgb_frame` takes. ``noise``
    fixes the initial noise (an ``(H, 25)`` float array); otherwise it is drawn from a generator
    seeded with ``seed`` for this request alone, or else from the history's generator.
    """

    history: FrameHistory
    frame: Any
    noise: Any = None
    seed: int | None = None
    prefix: Any = None
    """Optional real-time chunking input: the previous chunk's actions on the new chunk's grid, ``(k, 25)``."""
    delay: int | None = None
    """With ``prefix``: the frozen actions ``d`` (default 0)."""
    chunking: str = "rtc"
    """With ``prefix``: ``rtc`` or ``prefix`` (see :data:`CHUNKING_MODES`)."""
    beta: float | None = None
    """With ``prefix`` in ``rtc`` mode: the guidance cap (default :data:`~nitrogen.model.modeling.RTC_BETA`)."""


@dataclass
class BatchPrediction:
    """What :meth:`PolicyEngine.predict_batch` returns, one entry per request, in request order.

    ``actions[i]`` is request ``i``'s ``(H, 25)`` float32 action tensor, or ``None`` when it failed;
    then ``errors[i]`` says why: a ``ValueError`` for a bad frame or noise (that request never
    reached the model) or for a sampled action that is not finite (NaN or infinite: it is never
    returned), or :attr:`failure` when the model pass itself raised for the whole batch.
    ``batch_size`` counts the requests that reached the model. Times are for the whole batch:
    ``vision_ms`` from the start through the tower pass (noise, validation, resize, tower),
    ``sample_ms`` from there through sampling, ``total_ms`` both.
    """

    actions: list[np.ndarray | None]
    errors: list[Exception | None]
    batch_size: int
    vision_ms: float
    sample_ms: float
    total_ms: float
    failure: Exception | None = None


class PolicyEngine:
    """A NitroGen model on a device, with its precision, sampler settings and caches.

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
        num_steps: int | None = None,
        pack_weights: bool | None = None,
        button_order: str = DEFAULT_BUTTON_ORDER,
    ):
        self.model = model
        self.button_order = check_button_order(button_order)  # the model's button dims, see sample()
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.device = device
        self.autocast_dtype = autocast_dtype
        mcfg = self.config.model_cfg
        if mcfg.action_dim != ACTION_DIM:
            raise ValueError(f"checkpoint predicts {mcfg.action_dim} action dims; the gamepad layout has {ACTION_DIM}")
        self.game_mapping = checkpoint.game_mapping
        self.num_steps = int(mcfg.num_inference_timesteps if num_steps is None else num_steps)
        if not 1 <= self.num_steps <= mcfg.num_timestep_buckets:
            raise ValueError(f"num_steps must be in 1..{mcfg.num_timestep_buckets}, got {self.num_steps}")
        self._schedule: Schedule | None = None
        self.packed_layers = self._pack(pack_weights)
        self.fast_sample: Callable[[Conditioning, torch.Tensor], torch.Tensor] | None = None
        """A faster ``(cond, noise) -> actions`` for batches without guidance (see :mod:`.compiled`)."""

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        num_steps: int | None = None,
        pack_weights: bool | None = None,
        button_order: str = DEFAULT_BUTTON_ORDER,
    ) -> PolicyEngine:
        dev = resolve_device(device)
        weight_dtype = resolve_dtype(dtype)
        autocast = torch.bfloat16 if (weight_dtype is None and dev.type == "cuda") else None
        model, raw = load_model(path, device=dev, dtype=weight_dtype)
        return cls(
            model,
            raw,
            device=dev,
            autocast_dtype=autocast,
            num_steps=num_steps,
            pack_weights=pack_weights,
            button_order=button_order,
        )

    def _pack(self, pack_weights: bool | None) -> int:
        """Pre-pack weights for oneDNN on CPU (see :mod:`nitrogen.inference.cpu_kernels`); returns the layer count.

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

    # ------------------------------------------------------------------------------ settings

    @property
    def action_horizon(self) -> int:
        return self.config.model_cfg.action_horizon

    @property
    def precision(self) -> str:
        weights = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        autocast = f", {str(self.autocast_dtype).removeprefix('torch.')} autocast" if self.autocast_dtype else ""
        return f"{weights} weights{autocast}"

    def list_games(self) -> dict[str, int]:
        """The checkpoint's games by name -> id; ``""`` (id 0) is unconditional. Empty if none."""
        return dict(sorted((self.game_mapping or {}).items(), key=lambda kv: kv[1]))

    def resolve_game(self, game: str | int | None) -> tuple[int | None, str | None]:
        """A game name or id -> ``(id, name)``; None is the unconditional game (if any)."""
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

    def check_context_length(self, context_length: int) -> int:
        """Validate a frame-history length against the checkpoint's VL token budget."""
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1 frame, got {context_length}")
        model, limit = self.model, self.config.tokenizer_cfg.max_sequence_length
        tokens = context_length * model.vision_spec.tokens_per_frame + int(model.has_games)
        if tokens > limit:
            raise ValueError(
                f"context_length={context_length} needs {tokens} VL tokens, but this checkpoint allows {limit} "
                f"({model.vision_spec.tokens_per_frame} per frame{' + 1 game token' if model.has_games else ''})"
            )
        return context_length

    def noise(self, noise: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Validated ``(H, 25)`` initial noise, or a fresh draw from ``generator``."""
        H = self.action_horizon
        if noise is None:
            return torch.randn(H, ACTION_DIM, generator=generator)
        arr = np.asarray(noise)
        if arr.shape != (H, ACTION_DIM):
            raise ValueError(f"noise must have shape ({H}, {ACTION_DIM}), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError("noise must be finite floating-point values")
        if np.abs(arr).max() > MAX_NOISE_ABS:
            raise ValueError(f"noise values must be within +-{MAX_NOISE_ABS:g}")
        return torch.from_numpy(arr.astype(np.float32))

    def chunk_prefix(
        self, prefix: Any, delay: Any = None, chunking: Any = "rtc", beta: Any = None
    ) -> ChunkPrefix | None:
        """A validated :class:`ChunkPrefix`, or None without a prefix; ``ValueError`` says what is wrong.

        The prefix must be a finite floating-point ``(k, 25)`` array with ``1 <= k <= H`` and values
        within +-:data:`MAX_PREFIX_ABS`; ``delay`` an integer in ``0..k``; ``chunking`` one of
        :data:`CHUNKING_MODES`; ``beta`` a finite number in ``0..``:data:`MAX_RTC_BETA`.
        """
        if prefix is None:
            if delay is not None:
                raise ValueError("a delay was given without a prefix")
            return None
        H = self.action_horizon
        arr = np.asarray(prefix)
        if arr.ndim != 2 or arr.shape[1] != ACTION_DIM or not 1 <= arr.shape[0] <= H:
            raise ValueError(f"prefix must have shape (k, {ACTION_DIM}) with 1 <= k <= {H}, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError("prefix must be finite floating-point values")
        if np.abs(arr).max() > MAX_PREFIX_ABS:
            raise ValueError(f"prefix values must be within +-{MAX_PREFIX_ABS:g}")
        d = 0 if delay is None else delay
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= arr.shape[0]:
            raise ValueError(f"delay must be an integer from 0 to the prefix length {arr.shape[0]}")
        if chunking not in CHUNKING_MODES:
            raise ValueError(f"chunking must be one of {list(CHUNKING_MODES)}")
        b = RTC_BETA if beta is None else beta
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not np.isfinite(b) or not 0 <= b <= MAX_RTC_BETA:
            raise ValueError(f"beta must be a finite number from 0 to {MAX_RTC_BETA:g}")
        return ChunkPrefix(torch.from_numpy(arr.astype(np.float32)), int(d), str(chunking), float(b))

    @property
    def image_size(self) -> int:
        """The side of the square frame the tower takes, from the checkpoint; frames are squashed to it."""
        return self.model.vision_spec.image_size

    def info(self) -> dict[str, Any]:
        """Everything about the model, including what :meth:`nitrogen.policy.PolicySpec.from_info` reads."""
        mcfg = self.config.model_cfg
        return {
            "name": checkpoint_name(self.checkpoint.path, self.config.experiment_name),
            "checkpoint": str(self.checkpoint.path) if self.checkpoint.path else None,
            "experiment_name": self.config.experiment_name,
            "vision_encoder": mcfg.vision_encoder_name,
            "device": str(self.device),
            "precision": self.precision,
            "packed_layers": self.packed_layers,
            "games": self.list_games(),
            "num_steps": self.num_steps,
            "action_horizon": mcfg.action_horizon,
            "action_shift": self.config.modality_cfg.action_shift,
            "action_dim": ACTION_DIM,
            "buttons": list(BUTTONS),
            "button_order": self.button_order,
            "action_layout": layout_description(),
            "image_size": self.image_size,
            "step_rate_hz": STEP_RATE_HZ,
            "supports_rtc": True,
        }

    # ---------------------------------------------------------------------------- inference

    def autocast(self) -> Any:
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def schedule(self) -> Schedule:
        if self._schedule is None:
            self._schedule = self.model.model.schedule(self.model.step_buckets(self.num_steps, self.device))
        return self._schedule

    def preprocess(self, frame: Any) -> np.ndarray:
        """Validate a frame and squash it, once, to the tower's input size (CPU work, no model)."""
        return resize_frame(as_rgb_frame(frame), self.image_size)

    def encode(self, frames: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Preprocessed frames -> their vision tokens, each ``(P, D)``, in one tower pass.

        Call under ``torch.inference_mode()`` and :meth:`autocast`.
        """
        pixels = to_pixels(list(frames)).to(self.device)
        return list(self.model.encode_frames(pixels).unbind(0))

    def sample(self, requests: Sequence[PredictRequest]) -> np.ndarray:
        """Action tensors ``(B, H, 25)`` for a batch of histories; call like :meth:`encode`.

        The conditional input of a sample has its whole history and its game; with CFG its
        unconditional input has only the newest frame and no game token. All of them go through
        the mixer together, and every Euler step is one DiT pass over the whole batch.
        """
        model = self.model
        guided = [i for i, r in enumerate(requests) if r.cfg_scale != 1.0]
        frames = [torch.stack(list(r.history)) for r in requests] + [requests[i].history[-1][None] for i in guided]
        games = [r.game_id for r in requests] + [None] * len(guided)
        both = model.condition(model.vl_tokens(frames, games))
        B = len(requests)
        cond = both.rows(0, B)
        uncond = both.rows(B) if guided else None
        noise = torch.stack([r.noise for r in requests]).to(self.device)
        scales = torch.tensor([requests[i].cfg_scale for i in guided], dtype=torch.float32, device=self.device)
        index = torch.tensor(guided, dtype=torch.long, device=self.device) if guided else None
        prefix = self.prefix_guide(requests)
        if uncond is None and prefix is None and self.fast_sample is not None:
            actions = self.fast_sample(cond, noise)  # a compiled or graphed copy of the same sampler
        else:
            actions = model.sample(
                cond, noise, self.num_steps, uncond, scales, self.schedule(), guided=index, prefix=prefix
            )
        # The model's button dims in its order -> the layout's (identity for the default order).
        return reorder_buttons(actions.float().cpu().numpy(), self.button_order, to="layout")

    def prefix_guide(self, requests: Sequence[PredictRequest]) -> PrefixGuide | None:
        """The sampler's :class:`~nitrogen.model.modeling.PrefixGuide` for the requests with a prefix, or None."""
        rows = [i for i, r in enumerate(requests) if r.prefix is not None]
        if not rows:
            return None
        H, dev = self.action_horizon, self.device
        target = torch.zeros(len(rows), H, ACTION_DIM)
        for j, i in enumerate(rows):
            actions = requests[i].prefix.actions
            # The prefix comes in the layout's button order; the model guides in its own.
            target[j, : actions.shape[0]] = reorder_buttons(actions, self.button_order, to="model")
        prefixes = [requests[i].prefix for i in rows]
        return PrefixGuide(
            rows=torch.tensor(rows, dtype=torch.long, device=dev),
            target=target.to(dev),
            length=torch.tensor([p.actions.shape[0] for p in prefixes], dtype=torch.long, device=dev),
            delay=torch.tensor([p.delay for p in prefixes], dtype=torch.long, device=dev),
            guided=torch.tensor([p.mode == "rtc" for p in prefixes], dtype=torch.bool, device=dev),
            beta=torch.tensor([p.beta for p in prefixes], dtype=torch.float32, device=dev),
        )

    def predict_batch(self, requests: Sequence[FrameRequest]) -> BatchPrediction:
        """Predict for a batch of histories, one new frame each: the one inference path.

        Per request: draw or check the noise, check the prefix (:meth:`chunk_prefix`), then validate
        and squash the frame; a ``ValueError``
        there fails that request alone. Then one tower pass over the frames that passed, each
        frame's tokens appended to its history, and one batched :meth:`sample`. If the model pass
        raises, every request that reached it fails with that exception (:attr:`BatchPrediction.failure`).
        A history may appear only once per batch, since each request sees the history the one
        before it left.
        """
        histories = [id(r.history) for r in requests]
        if len(set(histories)) != len(histories):
            raise ValueError("a history may appear only once per batch")
        errors: list[Exception | None] = [None] * len(requests)
        actions: list[np.ndarray | None] = [None] * len(requests)
        failure: Exception | None = None
        ready: list[tuple[int, torch.Tensor, np.ndarray]] = []  # (request index, noise (H, 25), frame (S, S, 3))
        prefixes: dict[int, ChunkPrefix | None] = {}
        with torch.inference_mode(), self.autocast():
            t0 = time.perf_counter()
            for i, request in enumerate(requests):
                try:
                    generator = request.history.generator
                    if request.seed is not None:
                        generator = torch.Generator().manual_seed(request.seed)
                    noise = self.noise(request.noise, generator)
                    prefixes[i] = self.chunk_prefix(request.prefix, request.delay, request.chunking, request.beta)
                    ready.append((i, noise, self.preprocess(request.frame)))
                except ValueError as exc:
                    errors[i] = exc
            t1 = t0
            if ready:
                try:
                    tokens = self.encode([frame for _, _, frame in ready])
                    t1 = time.perf_counter()
                    samples = []
                    for (i, noise, _), frame_tokens in zip(ready, tokens, strict=True):
                        history = requests[i].history
                        history.append(frame_tokens)
                        features = list(history.features)
                        samples.append(PredictRequest(features, history.game_id, history.cfg_scale, noise, prefixes[i]))
                    sampled = self.sample(samples)
                except Exception as exc:  # noqa: BLE001 - handed back: the server answers each request with it
                    failure = exc
                    for i, _, _ in ready:
                        errors[i] = exc
                else:
                    for (i, _, _), action in zip(ready, sampled, strict=True):
                        if not np.isfinite(action).all():
                            errors[i] = ValueError(
                                "the sampled actions are not finite (NaN or infinite); try a smaller cfg_scale or noise"
                            )
                            continue
                        actions[i] = action
                        requests[i].history.predictions += 1
            t2 = time.perf_counter()
        return BatchPrediction(
            actions,
            errors,
            batch_size=len(ready),
            vision_ms=(t1 - t0) * 1e3,
            sample_ms=(t2 - t1) * 1e3,
            total_ms=(t2 - t0) * 1e3,
            failure=failure,
        )
