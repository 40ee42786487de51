"""nitrogen: serve, play and fine-tune NitroGen-style gaming agents.

The public API is what this module exports; everything else may change. Names are imported on
first use, so ``import nitrogen`` (and the light client) does not pull in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ACTION_DIM": "actions",
    "BUTTONS": "actions",
    "pack_actions": "actions",
    "unpack_actions": "actions",
    "CheckpointConfig": "model.configuration",
    "DiTConfig": "model.configuration",
    "MixerConfig": "model.configuration",
    "ModalityConfig": "model.configuration",
    "ModelConfig": "model.configuration",
    "TokenizerConfig": "model.configuration",
    "CheckpointError": "errors",
    "NitrogenError": "errors",
    "UnknownVisionEncoderError": "errors",
    "ActionChunk": "policy",
    "Policy": "policy",
    "convert_checkpoint": "model.checkpoint",
    "load_model": "model.checkpoint",
    "read_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "NitroGenModel": "model.modeling",
    "InferenceSession": "inference.session",
    "PolicyEngine": "inference.engine",
    "init_checkpoint": "model.presets",
    "agent_path": "default_agent",
    "demo": "default_agent",
    "HumanAgent": "runtime.human",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nitrogen' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .actions import ACTION_DIM, BUTTONS, pack_actions, unpack_actions  # noqa: F401
    from .default_agent import agent_path, demo  # noqa: F401
    from .errors import CheckpointError, NitrogenError, UnknownVisionEncoderError  # noqa: F401
    from .inference.engine import PolicyEngine  # noqa: F401
    from .inference.session import InferenceSession  # noqa: F401
    from .model.checkpoint import convert_checkpoint, load_model, read_checkpoint, save_checkpoint  # noqa: F401
    from .model.configuration import (  # noqa: F401
        CheckpointConfig,
        DiTConfig,
        MixerConfig,
        ModalityConfig,
        ModelConfig,
        TokenizerConfig,
    )
    from .model.modeling import NitroGenModel  # noqa: F401
    from .model.presets import init_checkpoint  # noqa: F401
    from .policy import ActionChunk, Policy  # noqa: F401
    from .runtime.human import HumanAgent  # noqa: F401
