"""The fine-tuning configuration: one validated pydantic model, loadable from YAML or JSON.

Freezing decisions (ours):

* The SigLIP pooling head (``vision_encoder.head.*``) is in the checkpoint but the model never runs
  it (:meth:`NitroGenModel.encode_frames` stops at ``post_layernorm``), so no gradient can reach it.
  It is always frozen, in every mode, which also keeps DDP from waiting on gradients that never come.
* The original training code froze the last vision layer (layer 11). We do not special-case it. Our
  reasoning: that freeze looks like a workaround for DDP's unused-parameter error in a setup whose
  pooling bypassed part of the last layer; here the last layer's output feeds ``post_layernorm`` and
  the mixer, so every one of its parameters gets a gradient and there is nothing to work around.
  Whether to tune the vision tower at all is the ``freeze_vision`` / ``lora_vision`` choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    # DiT and VL mixer: attention projections and the feed-forward layers.
    r"^(model|vl_self_attention_model)\.transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^(model|vl_self_attention_model)\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$",
)
"""Regexes over module names (full match) of the ``nn.Linear`` layers that get LoRA adapters."""

VISION_LORA_TARGETS: tuple[str, ...] = (
    r"^vision_encoder\.encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
    r"^vision_encoder\.encoder\.layers\.\d+\.mlp\.(fc1|fc2)$",
)
"""Extra targets when ``lora_vision`` is set: the SigLIP encoder layers' attention and MLP."""


class FinetuneConfig(BaseModel):
    """Every knob of a fine-tuning run. Unknown keys are errors; values are checked on creation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---------------------------------------------------------------- what is trained
    mode: Literal["lora", "full"] = "lora"
    """``lora``: low-rank adapters on the targets, base weights frozen; ``full``: tune the weights."""
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    """Adapter scaling is ``lora_alpha / lora_rank``."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Regexes (full match) over module names; only ``nn.Linear`` modules are ever adapted."""
    lora_vision: bool = False
    """Also adapt the vision tower's attention and MLP projections (``VISION_LORA_TARGETS``)."""
    freeze_vision: bool | None = None
    """Freeze the vision tower's own weights. Default (None): True for lora, False for full."""
    freeze_mixer: bool = False
    """Freeze the VL mixer's own weights (full mode; in lora mode all base weights are frozen)."""
    freeze_dit: bool = False
    """Freeze the DiT's own weights (full mode)."""
    freeze_action_heads: bool = False
    """Freeze the action encoder/decoder and position embedding. In lora mode, False means these
    small category-specific layers (not ``nn.Linear``, so not adaptable) are trained in full."""
    disable_dropout: bool = False
    """Set every ``nn.Dropout`` of the model to p=0 (the DiT/mixer use 0.2) for deterministic runs."""

    # ---------------------------------------------------------------- optimisation
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(1000, ge=1)
    """Number of optimizer steps."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps`` (or constant)."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    """Per-process micro batch; the global batch is ``batch_size * num_processes * grad_accum``."""
    ema: float | None = Field(None, gt=0, lt=1)
    """EMA decay of the trainable weights (e.g. 0.9999), or None. The export uses the EMA weights."""
    seed: int = 0

    # ---------------------------------------------------------------- bookkeeping
    eval_every: int = Field(0, ge=0)
    """Evaluate every N steps (and at the end) when an eval set is given; 0: only at the end."""
    eval_batches: int | None = Field(None, ge=1)
    """Cap on the evaluation batches (None: the whole eval set); the capped windows are spread evenly over the set."""
    eval_sample_steps: int | None = Field(None, ge=1)
    """Euler steps for sampled action metrics (None: the checkpoint's ``num_inference_timesteps``)."""
    save_every: int = Field(500, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = Field(3, ge=1)
    """How many ``checkpoints/step-N`` folders to keep."""
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)
    bf16: bool = True
    """bf16 autocast through accelerate, on CUDA only (CPU runs in float32)."""
    gradient_checkpointing: bool = False
    """Activation checkpointing of the vision tower: less memory, about a third more compute."""
    export_safetensors: bool = False
    """Also write ``model.safetensors`` beside ``model.pt``."""
    progress: bool = True
    """Show a tqdm progress bar on the main process."""

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if not 0 <= self.betas[0] < 1 or not 0 <= self.betas[1] < 1:
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.mode == "lora" and not self.lora_targets and not self.lora_vision:
            raise ValueError("lora mode needs at least one target pattern")
        return self

    @property
    def vision_frozen(self) -> bool:
        """The resolved ``freeze_vision``."""
        return self.mode == "lora" if self.freeze_vision is None else self.freeze_vision

    def target_patterns(self) -> list[str]:
        """All LoRA target regexes, vision ones included when ``lora_vision`` is set."""
        return [*self.lora_targets, *(VISION_LORA_TARGETS if self.lora_vision else ())]


def _parse_value(text: str) -> Any:
    """An override's value: JSON when it parses (numbers, bools, null, lists), else the string."""
    lowered = text.strip()
    if lowered in ("None", "none", "~"):
        return None
    if lowered in ("True", "False"):
        return lowered == "True"
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config, apply ``key=value`` overrides, validate.

    ``path`` may be None (defaults only). Override values are parsed as JSON where possible, so
    ``lr=3e-4``, ``ema=null``, ``betas=[0.9,0.95]`` and ``mode=full`` all work.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return FinetuneConfig.model_validate(data | parse_overrides(overrides or []))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``key=value`` overrides as a dict, each value parsed as in :func:`load_config`."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value")
        data[key.strip()] = _parse_value(value)
    return data


def with_overrides(config: FinetuneConfig, overrides: list[str]) -> FinetuneConfig:
    """``config`` with ``key=value`` overrides applied, validated again."""
    if not overrides:
        return config
    return FinetuneConfig.model_validate(config.model_dump() | parse_overrides(overrides))
