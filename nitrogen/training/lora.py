"""LoRA adapters and parameter freezing for NitroGen, and merging back to the released layout.

Adapters are injected with :func:`peft.inject_adapter_in_model` straight into the plain
:class:`~nitrogen.model.modeling.NitroGenModel` (no ``PeftModel`` wrapper), so the training code keeps
calling ``model.training_loss``. Only ``nn.Linear`` modules whose names fully match one of the
config's regexes are adapted; ``CategorySpecificLinear`` (the action heads) is not an ``nn.Linear``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..model.checkpoint import build_model
from ..model.modeling import NitroGenModel
from .config import FinetuneConfig

ADAPTER_NAME = "default"

VISION = "vision_encoder."
VISION_HEAD = "vision_encoder.head."
MIXER = "vl_self_attention_model."
DIT = "model."
HEADS = ("action_encoder.", "action_decoder.", "position_embedding.", "game_embedding.")
"""The 'action heads' group: action encoder/decoder, position and game embeddings."""


def component(name: str) -> str:
    """The component a parameter belongs to: vision_head, vision, mixer, dit or heads."""
    if name.startswith(VISION_HEAD):
        return "vision_head"
    if name.startswith(VISION):
        return "vision"
    if name.startswith(MIXER):
        return "mixer"
    if name.startswith(DIT):
        return "dit"
    if name.startswith(HEADS):
        return "heads"
    raise ValueError(f"parameter {name!r} belongs to no known component")


def is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name or ".lora_magnitude" in name


def lora_target_modules(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules that fully match any of ``patterns``."""
    regexes = [re.compile(p) for p in patterns]
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and not name.startswith(VISION_HEAD) and any(r.fullmatch(name) for r in regexes)
    ]


def apply_lora(model: NitroGenModel, config: FinetuneConfig) -> list[str]:
    """Inject LoRA adapters in place; returns the adapted module names."""
    targets = lora_target_modules(model, config.target_patterns())
    if not targets:
        raise ValueError(f"no nn.Linear module matches the LoRA targets {config.target_patterns()}")
    lcfg = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(lcfg, model, adapter_name=ADAPTER_NAME)
    return targets


def _frozen(config: FinetuneConfig) -> dict[str, bool]:
    """Whether each component's own (non-adapter) weights are frozen."""
    lora = config.mode == "lora"
    return {
        "vision_head": True,  # never run by the model: no gradient can reach it
        "vision": config.vision_frozen,
        "mixer": lora or config.freeze_mixer,
        "dit": lora or config.freeze_dit,
        "heads": config.freeze_action_heads,
    }


def prepare_model(model: NitroGenModel, config: FinetuneConfig) -> dict[str, int]:
    """Apply the config to ``model`` in place: LoRA (in lora mode), freezing, dropout.

    In lora mode the base weights of the vision tower (unless ``freeze_vision=False``), mixer and
    DiT are frozen; the adapters are trainable unless their component's ``freeze_*`` flag is
    explicitly True; the action heads train in full unless ``freeze_action_heads``. In full mode a
    component trains unless its flag freezes it. The vision pooling head is always frozen.
    Returns counts: ``trainable`` and ``total`` parameters.
    """
    if config.mode == "lora":
        apply_lora(model, config)
    if config.disable_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    frozen = _frozen(config)
    explicit = {"vision": config.freeze_vision is True, "mixer": config.freeze_mixer, "dit": config.freeze_dit}
    for name, param in model.named_parameters():
        part = component(name)
        if is_lora_param(name):
            param.requires_grad_(not explicit.get(part, False) and part != "vision_head")
        else:
            param.requires_grad_(not frozen[part])
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError("the config freezes every parameter: nothing to train")
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


def enable_gradient_checkpointing(model: NitroGenModel) -> bool:
    """Activation checkpointing of the vision tower's layers (see ``NitroGenModel.encode_frames``):
    each layer keeps only its input and recomputes its activations in the backward pass."""
    model.gradient_checkpointing = True
    return True


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def merge_lora(model: NitroGenModel, *, inplace: bool = False) -> NitroGenModel:
    """Fold every adapter into its base weight (``W += B @ A * scaling``) and drop the adapters.

    Returns a plain :class:`NitroGenModel` whose ``state_dict()`` keys are exactly the released
    keys (checked against a freshly built model). The input is left untouched unless ``inplace``.
    """
    merged = model if inplace else copy.deepcopy(model)
    adapted = [(name, m) for name, m in merged.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in adapted:
        with torch.no_grad():
            module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = merged.get_submodule(parent_name) if parent_name else merged
        setattr(parent, child, module.get_base_layer())
    check_released_keys(merged)
    return merged


def check_released_keys(model: NitroGenModel) -> None:
    """Raise if ``model.state_dict()`` keys differ from those of a fresh model of its config."""
    fresh = build_model(
        model.config,
        model.vision_spec,
        model.game_embedding.num_embeddings if model.has_games else None,
        device="meta",
    )
    want, got = set(fresh.state_dict()), set(model.state_dict())
    if want != got:
        raise RuntimeError(
            f"merged keys differ from the released layout: missing {sorted(want - got)[:5]}, "
            f"unexpected {sorted(got - want)[:5]}"
        )


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights alone (``...lora_A.default.weight`` etc.), detached, on CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_lora_param(k)}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter by name, detached, on CPU (adapters plus tuned base weights)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
