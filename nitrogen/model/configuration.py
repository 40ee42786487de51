"""Typed configs for a NitroGen checkpoint.

They mirror the ``ckpt_config`` dict stored in released checkpoints. Defaults are the values of the
released ``ng.pt``, so ``CheckpointConfig()`` describes the released model. Unknown extra fields are
accepted and kept, so a config round-trips unchanged (the released one has ``use_action_mask``).

Every size has an upper bound (the ``MAX_*`` constants), far above the released model's but low
enough that a hostile checkpoint cannot ask for a million layers or ten million denoising steps;
floats must be finite. The total parameter count is bounded separately, before any model is built
(:func:`nitrogen.model.checkpoint.estimate_parameters`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SUPPORTED_ACTIVATIONS = ("gelu-approximate", "gelu")

# Upper bounds of a checkpoint's sizes (the released model's value in brackets).
MAX_LAYERS = 256
"""Blocks of the DiT, the VL mixer or the vision tower [8, 4, 24]."""
MAX_HEADS = 256
"""Attention heads of any stack [16]."""
MAX_HEAD_DIM = 1024
"""Width of one attention head [64]."""
MAX_WIDTH = 32_768
"""Model widths: ``hidden_size``, ``vision_hidden_size``, a stack's ``output_dim`` [1024]."""
MAX_POSITIONS = 65_536
"""Rows of a position table: ``max_seq_len``, ``max_num_positional_embeddings`` [1024, 512]."""
MAX_VL_TOKENS = 16_384
"""VL tokens the mixer attends over: ``max_sequence_length``, ``num_visual_tokens_per_frame`` [256]."""
MAX_ACTION_DIM = 4096
"""Action dims [25]."""
MAX_HORIZON = 4096
"""Actions per chunk and their shift, in frames [18, 3]."""
MAX_TIMESTEP_BUCKETS = 100_000
"""Discrete flow-time buckets [1000]."""
MAX_INFERENCE_STEPS = 1000
"""Default Euler steps per prediction [16]; the schedule holds ``steps x width`` per block."""
MAX_EMBODIMENTS = 1024
"""Per-embodiment weight sets of the action encoder and decoder [1]."""
MAX_CONTEXT_FRAMES = 64
"""Frames of context per sample [1]."""
MAX_FRAME_SPACING = 100_000
"""Frames between two context frames [18]."""
MAX_ADA_NORM_EMBEDS = 1_000_000
"""``num_embeds_ada_norm``, kept for the released format [1000]."""


DISTILLATION_KEY = "distillation"
"""The extra ``ckpt_config`` key of a distilled student's provenance (see :mod:`nitrogen.training.distill`)."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)


class TransformerConfig(_Config):
    """Fields shared by the DiT and the VL mixer."""

    num_attention_heads: int = Field(16, gt=0, le=MAX_HEADS)
    attention_head_dim: int = Field(64, gt=0, le=MAX_HEAD_DIM)
    output_dim: int = Field(1024, gt=0, le=MAX_WIDTH)
    num_layers: int = Field(8, ge=0, le=MAX_LAYERS)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    attention_bias: bool = True
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = Field(1000, le=MAX_ADA_NORM_EMBEDS)
    upcast_attention: bool = False
    max_num_positional_embeddings: int = Field(512, gt=0, le=MAX_POSITIONS)
    compute_dtype: str = "float32"
    final_dropout: bool = True
    positional_embeddings: Literal["sinusoidal"] | None = None
    interleave_self_attention: bool = False

    @field_validator("activation_fn")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        if value not in _SUPPORTED_ACTIVATIONS:
            raise ValueError(f"activation_fn must be one of {_SUPPORTED_ACTIVATIONS}, got {value!r}")
        return value

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class DiTConfig(TransformerConfig):
    """The flow-matching DiT: AdaLN on the timestep, optional interleaved self-attention blocks."""

    num_layers: int = Field(8, ge=0, le=MAX_LAYERS)
    norm_type: Literal["ada_norm"] = "ada_norm"
    norm_elementwise_affine: bool = False
    norm_eps: float = Field(1e-5, gt=0)
    interleave_self_attention: bool = True
    cross_attention_dim: int | None = Field(None, ge=0, le=MAX_WIDTH)

    def is_cross_attention_block(self, index: int) -> bool:
        """Even blocks cross-attend to the VL tokens; odd blocks self-attend when interleaving."""
        return not (self.interleave_self_attention and index % 2 == 1)


class MixerConfig(TransformerConfig):
    """The VL self-attention mixer over the vision (and game) tokens."""

    output_dim: int = Field(26, gt=0, le=MAX_WIDTH)
    num_layers: int = Field(4, ge=0, le=MAX_LAYERS)


class ModelConfig(_Config):
    model_type: Literal["nitrogen"] = "nitrogen"
    add_pos_embed: bool = True
    model_dtype: str = "float32"
    diffusion_model_cfg: DiTConfig = Field(default_factory=DiTConfig)
    vl_self_attention_cfg: MixerConfig = Field(default_factory=MixerConfig)
    hidden_size: int = Field(1024, gt=0, le=MAX_WIDTH)
    max_seq_len: int = Field(1024, gt=0, le=MAX_POSITIONS)
    action_dim: int = Field(25, gt=0, le=MAX_ACTION_DIM)
    action_horizon: int = Field(18, gt=0, le=MAX_HORIZON)
    noise_beta_alpha: float = Field(1.6, gt=0)
    noise_beta_beta: float = Field(0.8, gt=0)
    noise_s: float = Field(0.999, gt=0, le=1)
    num_timestep_buckets: int = Field(1000, gt=0, le=MAX_TIMESTEP_BUCKETS)
    num_inference_timesteps: int = Field(16, gt=0, le=MAX_INFERENCE_STEPS)
    max_num_embodiments: int = Field(1, gt=0, le=MAX_EMBODIMENTS)
    vision_encoder_name: str = Field("google/siglip2-large-patch16-256", min_length=1, max_length=1024)
    vision_hidden_size: int = Field(1024, gt=0, le=MAX_WIDTH)
    add_view_embed: bool = False
    tune_vision_tower: bool = True
    tune_mm_projector: bool = True
    tune_diffusion_model: bool = True
    tune_multi_projector: bool = True
    tune_vl_mixing: bool = True

    @model_validator(mode="after")
    def _consistent_widths(self) -> ModelConfig:
        dit, mixer = self.diffusion_model_cfg, self.vl_self_attention_cfg
        # An extra field (presets write it): the head count of a reduced vision tower.
        heads = (self.model_extra or {}).get("vision_num_heads")
        if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or not 0 < heads <= MAX_HEADS):
            raise ValueError(f"vision_num_heads must be an integer in 1..{MAX_HEADS}, got {heads!r}")
        if self.vision_hidden_size != self.hidden_size:
            raise ValueError(
                f"vision_hidden_size ({self.vision_hidden_size}) must equal hidden_size ({self.hidden_size}): "
                "checkpoints with a vision projector are not supported"
            )
        if mixer.inner_dim != self.vision_hidden_size:
            raise ValueError(
                f"VL mixer width heads*head_dim = {mixer.inner_dim} must equal vision_hidden_size "
                f"({self.vision_hidden_size})"
            )
        if dit.inner_dim != self.hidden_size:
            raise ValueError(f"DiT width heads*head_dim = {dit.inner_dim} must equal hidden_size ({self.hidden_size})")
        if dit.output_dim != self.hidden_size:
            raise ValueError(
                f"DiT output_dim ({dit.output_dim}) must equal hidden_size ({self.hidden_size}): "
                "the action decoder reads the DiT output"
            )
        if self.add_pos_embed and self.action_horizon > self.max_seq_len:
            raise ValueError(f"action_horizon ({self.action_horizon}) exceeds max_seq_len ({self.max_seq_len})")
        return self


class GameMappingConfig(_Config):
    src_files: list[str] = Field(default_factory=list)


class TokenizerConfig(_Config):
    tokenizer_id: Literal["nitrogen"] = "nitrogen"
    training: bool = True
    num_visual_tokens_per_frame: int = Field(256, gt=0, le=MAX_VL_TOKENS)
    max_action_dim: int = Field(25, gt=0, le=MAX_ACTION_DIM)
    max_sequence_length: int = Field(256, gt=0, le=MAX_VL_TOKENS)
    action_horizon: int = Field(18, gt=0, le=MAX_HORIZON)
    game_mapping_cfg: GameMappingConfig | None = None
    old_layout: bool = False

    @field_validator("old_layout")
    @classmethod
    def _released_layout_only(cls, value: bool) -> bool:
        if value:
            raise ValueError("old_layout=True (sticks before buttons) is not supported; only the released layout is")
        return value


class ModalityConfig(_Config):
    frame_per_sample: int = Field(1, gt=0, le=MAX_CONTEXT_FRAMES)
    frame_spacing: int = Field(18, gt=0, le=MAX_FRAME_SPACING)
    action_per_chunk: int = Field(18, gt=0, le=MAX_HORIZON)
    action_shift: int = Field(3, ge=0, le=MAX_HORIZON)
    action_interleaving: bool = False
    token_set: str = "new"


class CheckpointConfig(_Config):
    """The whole ``ckpt_config`` of a checkpoint."""

    experiment_name: str = "nitrogen"
    model_cfg: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer_cfg: TokenizerConfig = Field(default_factory=TokenizerConfig)
    modality_cfg: ModalityConfig = Field(default_factory=ModalityConfig)

    @model_validator(mode="after")
    def _consistent_sections(self) -> CheckpointConfig:
        model, tok = self.model_cfg, self.tokenizer_cfg
        if tok.action_horizon != model.action_horizon:
            raise ValueError(
                f"tokenizer action_horizon ({tok.action_horizon}) differs from model action_horizon "
                f"({model.action_horizon})"
            )
        if model.action_dim > tok.max_action_dim:
            raise ValueError(f"action_dim ({model.action_dim}) exceeds max_action_dim ({tok.max_action_dim})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def distillation(self) -> dict[str, Any] | None:
        """A distilled student's provenance (method, teacher path and sha256, steps), or None.

        It is an extra key of the config, which the released format keeps and other readers ignore.
        """
        record = (self.model_extra or {}).get(DISTILLATION_KEY)
        return record if isinstance(record, dict) else None
