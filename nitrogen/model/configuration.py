"""Typed configs for a NitroGen checkpoint.

They mirror the ``ckpt_config`` dict stored in released checkpoints. Defaults are the values of the
released ``ng.pt``, so ``CheckpointConfig()`` describes the released model. Unknown extra fields are
accepted and kept, so a config round-trips unchanged (the released one has ``use_action_mask``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SUPPORTED_ACTIVATIONS = ("gelu-approximate", "gelu")


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class TransformerConfig(_Config):
    """Fields shared by the DiT and the VL mixer."""

    num_attention_heads: int = Field(16, gt=0)
    attention_head_dim: int = Field(64, gt=0)
    output_dim: int = Field(1024, gt=0)
    num_layers: int = Field(8, ge=0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    attention_bias: bool = True
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = 1000
    upcast_attention: bool = False
    max_num_positional_embeddings: int = Field(512, gt=0)
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

    num_layers: int = Field(8, ge=0)
    norm_type: Literal["ada_norm"] = "ada_norm"
    norm_elementwise_affine: bool = False
    norm_eps: float = Field(1e-5, gt=0)
    interleave_self_attention: bool = True
    cross_attention_dim: int | None = None

    def is_cross_attention_block(self, index: int) -> bool:
        """Even blocks cross-attend to the VL tokens; odd blocks self-attend when interleaving."""
        return not (self.interleave_self_attention and index % 2 == 1)


class MixerConfig(TransformerConfig):
    """The VL self-attention mixer over the vision (and game) tokens."""

    output_dim: int = Field(26, gt=0)
    num_layers: int = Field(4, ge=0)


class ModelConfig(_Config):
    model_type: Literal["nitrogen"] = "nitrogen"
    add_pos_embed: bool = True
    model_dtype: str = "float32"
    diffusion_model_cfg: DiTConfig = Field(default_factory=DiTConfig)
    vl_self_attention_cfg: MixerConfig = Field(default_factory=MixerConfig)
    hidden_size: int = Field(1024, gt=0)
    max_seq_len: int = Field(1024, gt=0)
    action_dim: int = Field(25, gt=0)
    action_horizon: int = Field(18, gt=0)
    noise_beta_alpha: float = Field(1.6, gt=0)
    noise_beta_beta: float = Field(0.8, gt=0)
    noise_s: float = Field(0.999, gt=0, le=1)
    num_timestep_buckets: int = Field(1000, gt=0)
    num_inference_timesteps: int = Field(16, gt=0)
    max_num_embodiments: int = Field(1, gt=0)
    vision_encoder_name: str = "google/siglip2-large-patch16-256"
    vision_hidden_size: int = Field(1024, gt=0)
    add_view_embed: bool = False
    tune_vision_tower: bool = True
    tune_mm_projector: bool = True
    tune_diffusion_model: bool = True
    tune_multi_projector: bool = True
    tune_vl_mixing: bool = True

    @model_validator(mode="after")
    def _consistent_widths(self) -> ModelConfig:
        dit, mixer = self.diffusion_model_cfg, self.vl_self_attention_cfg
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
    num_visual_tokens_per_frame: int = Field(256, gt=0)
    max_action_dim: int = Field(25, gt=0)
    max_sequence_length: int = Field(256, gt=0)
    action_horizon: int = Field(18, gt=0)
    game_mapping_cfg: GameMappingConfig | None = None
    old_layout: bool = False

    @field_validator("old_layout")
    @classmethod
    def _released_layout_only(cls, value: bool) -> bool:
        if value:
            raise ValueError("old_layout=True (sticks before buttons) is not supported; only the released layout is")
        return value


class ModalityConfig(_Config):
    frame_per_sample: int = Field(1, gt=0)
    frame_spacing: int = Field(18, gt=0)
    action_per_chunk: int = Field(18, gt=0)
    action_shift: int = Field(3, ge=0)
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
