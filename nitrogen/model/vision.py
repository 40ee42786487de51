"""The SigLIP vision tower: a registry of known encoders, and building one without the hub.

Released checkpoints contain every vision weight, so the tower is built from a
``SiglipVisionConfig`` alone. Known encoder names map to their architecture constants; other names
fall back to a config already in the local Hugging Face cache.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from ..errors import CheckpointError, UnknownVisionEncoderError
from .configuration import MAX_HEADS, MAX_LAYERS, MAX_VL_TOKENS, MAX_WIDTH

log = logging.getLogger(__name__)

PREFIX = "vision_encoder."
MAX_IMAGE_SIZE = 8192
"""Largest input side of a tower (the released one takes 256)."""


@dataclass(frozen=True)
class VisionSpec:
    """Architecture constants of a SigLIP vision tower."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_size: int
    patch_size: int
    image_size: int
    activation: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_hf(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.mlp_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_channels=3,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act=self.activation,
            layer_norm_eps=self.layer_norm_eps,
            attention_dropout=0.0,
        )


_LARGE_256 = VisionSpec(hidden_size=1024, num_layers=24, num_heads=16, mlp_size=4096, patch_size=16, image_size=256)

KNOWN_ENCODERS: dict[str, VisionSpec] = {
    # The released NitroGen encoder: a fixed-resolution SigLIP2 using the SigLIP v1 architecture class.
    "google/siglip2-large-patch16-256": _LARGE_256,
    "google/siglip-large-patch16-256": _LARGE_256,
    "google/siglip2-base-patch16-256": VisionSpec(768, 12, 12, 3072, 16, 256),
    "google/siglip-base-patch16-256": VisionSpec(768, 12, 12, 3072, 16, 256),
    "google/siglip-base-patch16-224": VisionSpec(768, 12, 12, 3072, 16, 224),
    "google/siglip-so400m-patch14-384": VisionSpec(1152, 27, 16, 4304, 14, 384),
}


_LAYER_KEY = re.compile(re.escape(PREFIX) + r"encoder\.layers\.(\d{1,9})\.")


def _cached_spec(name: str) -> VisionSpec:
    """Read an encoder's config from the local Hugging Face cache, never from the network."""
    try:
        cfg = SiglipVisionConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        known = ", ".join(sorted(KNOWN_ENCODERS))
        raise UnknownVisionEncoderError(
            f"unknown vision encoder {name!r}: it is not one of the registered encoders ({known}) "
            "and no config for it is in the local Hugging Face cache"
        ) from exc
    spec = VisionSpec(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        mlp_size=cfg.intermediate_size,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        activation=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
    )
    check_spec(spec, f"vision tower in the cached config of {name!r}")
    return spec


def check_spec(spec: VisionSpec, what: str = "vision tower") -> VisionSpec:
    """Refuse a tower geometry beyond the bounds of :mod:`nitrogen.model.configuration`."""
    bounds = {  # field: (value, smallest, largest)
        "hidden_size": (spec.hidden_size, 1, MAX_WIDTH),
        "num_layers": (spec.num_layers, 0, MAX_LAYERS),
        "num_heads": (spec.num_heads, 1, MAX_HEADS),
        "mlp_size": (spec.mlp_size, 1, 4 * MAX_WIDTH),
        "patch_size": (spec.patch_size, 1, MAX_IMAGE_SIZE),
        "image_size": (spec.image_size, 1, MAX_IMAGE_SIZE),
    }
    for field, (value, lowest, highest) in bounds.items():
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            raise CheckpointError(f"{what}: {field} must be an integer in {lowest}..{highest}, got {value!r}")
    if spec.hidden_size % spec.num_heads:
        raise CheckpointError(f"{what}: width {spec.hidden_size} is not divisible by {spec.num_heads} attention heads")
    if spec.patch_size > spec.image_size:
        raise CheckpointError(f"{what}: patch {spec.patch_size} is larger than its image {spec.image_size}")
    if spec.tokens_per_frame > MAX_VL_TOKENS:
        raise CheckpointError(
            f"{what}: makes {spec.tokens_per_frame} tokens per frame, over the limit of {MAX_VL_TOKENS}"
        )
    return spec


def lookup_spec(name: str) -> VisionSpec:
    """The registered (or locally cached) architecture of the encoder called ``name``."""
    spec = KNOWN_ENCODERS.get(name)
    return spec if spec is not None else _cached_spec(name)


def spec_from_weights(name: str, shapes: Mapping[str, tuple[int, ...]], reduced_heads: int | None = None) -> VisionSpec:
    """The encoder's architecture, with its geometry read from the checkpoint's weight shapes.

    The name gives what shapes cannot (activation, eps, head count). Width, depth, MLP size, patch
    and image size come from the weights, so a reduced tower (as in tests and distillations) loads
    too. Shapes cannot tell a reduced tower's head count: it is ``reduced_heads`` (the loader passes
    the config's ``vision_num_heads`` if set, else the VL mixer's head count, which equals the
    tower's in the released model).
    """
    spec = lookup_spec(name)
    patch_key = PREFIX + "embeddings.patch_embedding.weight"
    pos_key = PREFIX + "embeddings.position_embedding.weight"
    fc1_key = PREFIX + "encoder.layers.0.mlp.fc1.weight"
    if patch_key not in shapes or pos_key not in shapes:
        return spec  # the strict key check reports what is missing
    for key, ndim in ((patch_key, 4), (pos_key, 2), (fc1_key, 2)):
        if key in shapes and len(shapes[key]) != ndim:
            raise CheckpointError(f"{key} has shape {tuple(shapes[key])}, expected {ndim} dimensions")
    hidden, _, patch, _ = shapes[patch_key]
    num_positions = shapes[pos_key][0]
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise CheckpointError(f"{pos_key} has {num_positions} positions, which is not a square grid of patches")
    layer_ids = {int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k))}
    mlp = shapes[fc1_key][0] if fc1_key in shapes else spec.mlp_size
    inferred = replace(
        spec,
        hidden_size=hidden,
        num_layers=len(layer_ids),
        mlp_size=mlp,
        patch_size=patch,
        image_size=grid * patch,
    )
    if inferred.hidden_size != spec.hidden_size:
        heads = reduced_heads or max(1, hidden // spec.head_dim)
        inferred = replace(inferred, num_heads=heads)
    check_spec(inferred)
    if inferred != spec:
        log.info("vision tower of %r has a non-standard geometry in this checkpoint: %s", name, inferred)
    return inferred


def build_vision_tower(spec: VisionSpec) -> SiglipVisionModel:
    """A randomly initialised SigLIP vision tower; weights come from the checkpoint afterwards."""
    model = SiglipVisionModel(spec.to_hf())
    # transformers < 5 wraps the tower in `.vision_model`; the checkpoint keys are those of the tower.
    return getattr(model, "vision_model", model)


def rebuild_position_ids(tower: torch.nn.Module, device: torch.device | str = "cpu") -> None:
    """Recreate the non-persistent ``position_ids`` buffer, which is not stored in checkpoints."""
    embeddings = tower.embeddings
    n = embeddings.position_embedding.num_embeddings
    embeddings.position_ids = torch.arange(n, device=device).expand((1, -1))
