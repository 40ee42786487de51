"""Model presets: NitroGen-architecture checkpoints built from scratch instead of loaded.

A preset is a small set of sizes (width, depths, heads, patch) turned into a full
:class:`~nitrogen.model.configuration.CheckpointConfig`. :func:`init_checkpoint` builds a randomly
initialised model of that shape, and ``nitrogen finetune --ckpt init:NAME`` trains it, so a model
can be trained from nothing with the same command that fine-tunes ``ng.pt``.

The vision tower is a reduced SigLIP: the encoder name gives its activation and norm epsilon, the
weights give its geometry, and ``model_cfg.vision_num_heads`` its head count (see
:func:`nitrogen.model.vision.spec_from_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..errors import NitrogenError
from .checkpoint import RawCheckpoint, build_model
from .configuration import CheckpointConfig
from .vision import VisionSpec, lookup_spec

INIT_PREFIX = "init:"
"""``--ckpt init:NAME`` starts from a fresh model of preset ``NAME``."""


class UnknownPresetError(NitrogenError, ValueError):
    """A preset name that is not in :data:`PRESETS`."""


@dataclass(frozen=True)
class ModelPreset:
    """The sizes of a from-scratch model; everything else is the released config's."""

    width: int
    """Width of every stream: vision tokens, VL mixer and DiT (the architecture ties them)."""
    heads: int
    """Attention heads of the vision tower, the mixer and the DiT (head dim = width / heads)."""
    vision_layers: int
    vision_mlp: int
    patch: int
    """Vision patch size; a frame of the encoder's ``image_size`` gives (image_size / patch)^2 tokens."""
    mixer_layers: int
    dit_layers: int
    dropout: float = 0.0
    max_seq_len: int = 32
    """Rows of the action position embedding (released: 1024); only ``action_horizon`` are used."""
    action_shift: int = 0
    """Frames between the observed frame and the first action of its chunk (released: 3)."""
    context_frames: int = 1
    position_init: Literal["random", "sincos"] = "random"
    """Start of the vision tower's learned position table: SigLIP's small random values, or a 2-D
    sine-cosine table (:func:`sincos_positions`) that tells the patches apart from the first step."""
    encoder_name: str = "google/siglip2-base-patch16-256"
    """Registered SigLIP whose activation, norm epsilon and input size (:attr:`image_size`) the
    reduced tower keeps."""
    description: str = ""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.image_size % self.patch:
            raise ValueError(
                f"patch {self.patch} does not divide the {self.image_size}-pixel frame of {self.encoder_name}"
            )

    @property
    def image_size(self) -> int:
        """The side of the square frame the tower takes: the encoder's own."""
        return lookup_spec(self.encoder_name).image_size

    @property
    def grid(self) -> int:
        """Patches per side of a frame."""
        return self.image_size // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2


PRESETS: dict[str, ModelPreset] = {
    "agent-small": ModelPreset(
        width=256,
        heads=4,
        vision_layers=4,
        vision_mlp=512,
        patch=32,
        mixer_layers=2,
        dit_layers=4,
        position_init="sincos",
        description="the shipped default agent's shape: 9.3M parameters (37 MB), trains on a 2-core CPU",
    ),
    "tiny": ModelPreset(
        width=64,
        heads=2,
        vision_layers=1,
        vision_mlp=128,
        patch=32,
        mixer_layers=1,
        dit_layers=2,
        description="for tests: ~0.3M parameters",
    ),
}
"""Preset name -> sizes."""


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def preset_config(preset: ModelPreset | str, experiment_name: str | None = None) -> CheckpointConfig:
    """The full checkpoint config of a preset (released values for everything it does not set)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    name = experiment_name or "nitrogen-from-scratch"
    block = {
        "num_attention_heads": p.heads,
        "attention_head_dim": p.width // p.heads,
        "dropout": p.dropout,
    }
    return CheckpointConfig.model_validate(
        {
            "experiment_name": name,
            "model_cfg": {
                "hidden_size": p.width,
                "vision_hidden_size": p.width,
                "vision_encoder_name": p.encoder_name,
                "vision_num_heads": p.heads,
                "max_seq_len": p.max_seq_len,
                "diffusion_model_cfg": {**block, "output_dim": p.width, "num_layers": p.dit_layers},
                "vl_self_attention_cfg": {**block, "num_layers": p.mixer_layers},
            },
            "tokenizer_cfg": {
                "num_visual_tokens_per_frame": p.tokens_per_frame,
                "max_sequence_length": p.tokens_per_frame * p.context_frames + 1,
            },
            "modality_cfg": {"frame_per_sample": p.context_frames, "action_shift": p.action_shift},
        }
    )


def vision_spec(preset: ModelPreset) -> VisionSpec:
    """The reduced SigLIP tower of a preset."""
    base = lookup_spec(preset.encoder_name)
    return replace(
        base,
        hidden_size=preset.width,
        num_layers=preset.vision_layers,
        num_heads=preset.heads,
        mlp_size=preset.vision_mlp,
        patch_size=preset.patch,
        image_size=preset.image_size,
    )


def sincos_positions(grid: int, width: int) -> torch.Tensor:
    """2-D sine-cosine position table ``(grid * grid, width)``, row-major like SigLIP's patch order.

    A quarter of the channels encode the patch row as sines, a quarter as cosines, and the other
    half the column, at ``width / 4`` frequencies spaced geometrically from 1 to 1/10000.
    """
    if width % 4:
        raise ValueError(f"width {width} is not divisible by 4")
    freqs = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))  # (W/4,)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (G, G) each
    # (G*G, 1) positions times (1, W/4) frequencies -> (G*G, W/4) angles per axis
    row_angles = rows.reshape(-1, 1).double() * freqs
    col_angles = cols.reshape(-1, 1).double() * freqs
    table = torch.cat([row_angles.sin(), row_angles.cos(), col_angles.sin(), col_angles.cos()], dim=1)
    return table.float()  # (G*G, W)


def init_checkpoint(preset: ModelPreset | str, seed: int = 0) -> RawCheckpoint:
    """A randomly initialised checkpoint of ``preset``, seeded, in the released layout."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    config = preset_config(p, experiment_name=preset if isinstance(preset, str) else None)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = build_model(config, vision_spec(p))
    if p.position_init == "sincos":
        table = model.vision_encoder.embeddings.position_embedding.weight  # (P, D)
        with torch.no_grad():
            table.copy_(sincos_positions(p.grid, p.width))
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    return RawCheckpoint(config=config, state_dict=state, game_mapping=None)
