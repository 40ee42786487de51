"""Checkpoint I/O: the released ``.pt`` format and ``.safetensors``, both ways.

A released checkpoint is a ``torch.save`` of plain data::

    {"ckpt_config": dict, "model": state_dict, "game_mapping": dict[str, int]  # optional}

It is read with ``torch.load(weights_only=True)``, memory-mapped where the file allows, and the
weights are assigned into a model built on the meta device, so loading never holds two full copies.
In ``.safetensors`` files the config and game mapping live in the metadata as JSON.
Writes are atomic (:func:`nitrogen.atomic.atomic_path`: a temporary file beside the target, fsynced,
then renamed over it).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from ..atomic import atomic_path
from ..errors import CheckpointError
from .configuration import CheckpointConfig
from .modeling import NitroGenModel
from .vision import PREFIX as VISION_PREFIX
from .vision import VisionSpec, lookup_spec, rebuild_position_ids, spec_from_weights

SAFETENSORS_FORMAT = "nitrogen"
GameMapping = dict[str, int]


@dataclass
class RawCheckpoint:
    """A checkpoint's parts, validated but not yet turned into a model."""

    config: CheckpointConfig
    state_dict: dict[str, torch.Tensor]
    game_mapping: GameMapping | None
    path: Path | None = None


def _validate_config(raw: Any, where: str) -> CheckpointConfig:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: 'ckpt_config' must be a dict, got {type(raw).__name__}")
    try:
        return CheckpointConfig.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CheckpointError(f"{where}: invalid ckpt_config: {problems}") from None


def _validate_game_mapping(raw: Any, where: str) -> GameMapping | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raise CheckpointError(f"{where}: 'game_mapping' must map game names to integer ids")
    # The unconditional game may be stored as None by older tools; it is "" here.
    mapping = {("" if k is None else str(k)): int(v) for k, v in raw.items()}
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise CheckpointError(
            f"{where}: game ids must be 0..{len(mapping) - 1} without gaps, got {sorted(mapping.values())}"
        )
    return mapping


def _torch_load(path: Path) -> Any:
    """``torch.load`` of plain data only, memory-mapped when the file is in the zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL:? ?([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: contains a pickle that is not plain data: it refers to {found.group(1)!r}, which "
                "weights_only loading refuses. Only checkpoints of tensors, dicts, lists, strings and numbers load."
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, or not a torch.save file)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read and validate a ``.pt`` or ``.safetensors`` checkpoint (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict with 'ckpt_config' and 'model', got {type(obj).__name__}")
    for key in ("ckpt_config", "model"):
        if key not in obj:
            raise CheckpointError(f"{path}: missing top-level key {key!r} (found {sorted(map(str, obj))})")
    state = obj["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'model' must be a state dict of tensors")
    return RawCheckpoint(
        config=_validate_config(obj["ckpt_config"], str(path)),
        state_dict=dict(state),
        game_mapping=_validate_game_mapping(obj.get("game_mapping"), str(path)),
        path=path,
    )


def _read_safetensors(path: Path) -> RawCheckpoint:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_safetensors(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if "ckpt_config" not in meta:
        raise CheckpointError(f"{path}: safetensors metadata has no 'ckpt_config'; is this a NitroGen checkpoint?")
    try:
        config = json.loads(meta["ckpt_config"])
        mapping = json.loads(meta["game_mapping"]) if "game_mapping" in meta else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    return RawCheckpoint(
        config=_validate_config(config, str(path)),
        state_dict=state,
        game_mapping=_validate_game_mapping(mapping, str(path)),
        path=path,
    )


def vision_spec_for(raw: RawCheckpoint) -> VisionSpec:
    """The vision tower's architecture: registered by name, geometry read from the weights."""
    mcfg = raw.config.model_cfg
    shapes = {k: tuple(v.shape) for k, v in raw.state_dict.items() if k.startswith(VISION_PREFIX)}
    heads = getattr(mcfg, "vision_num_heads", None) or mcfg.vl_self_attention_cfg.num_attention_heads
    return spec_from_weights(mcfg.vision_encoder_name, shapes, reduced_heads=heads)


def build_model(
    config: CheckpointConfig,
    vision: VisionSpec | None = None,
    num_games: int | None = None,
    device: torch.device | str | None = None,
) -> NitroGenModel:
    """A model for ``config`` with random weights; on ``device="meta"`` it takes no memory."""
    vision = vision or lookup_spec(config.model_cfg.vision_encoder_name)
    with torch.device(device or "cpu"):
        model = NitroGenModel(config, vision, num_games=num_games)
    return model


def _check_state_dict(model: NitroGenModel, state: Mapping[str, torch.Tensor], where: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    mismatched = [
        f"{k}: checkpoint {got[k]} vs model {expected[k]}"
        for k in sorted(expected.keys() & got.keys())
        if got[k] != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:8])}")
    if problems:
        raise CheckpointError(f"{where}: state dict does not match its ckpt_config: " + " | ".join(problems))


def model_from_checkpoint(
    raw: RawCheckpoint,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> NitroGenModel:
    """Build the model on the meta device and assign the checkpoint's tensors into it."""
    where = str(raw.path or "checkpoint")
    if raw.game_mapping is None and "game_embedding.weight" in raw.state_dict:
        raise CheckpointError(f"{where}: has a game embedding but no 'game_mapping' to name its games")
    vision = vision_spec_for(raw)
    num_games = len(raw.game_mapping) if raw.game_mapping is not None else None
    try:
        model = build_model(raw.config, vision, num_games, device="meta")
    except ValueError as exc:
        raise CheckpointError(f"{where}: cannot build the model from its ckpt_config: {exc}") from None
    _check_state_dict(model, raw.state_dict, where)
    target = torch.device(device) if device is not None else torch.device("cpu")
    state = {
        k: v.to(device=target, dtype=dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
        for k, v in raw.state_dict.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    rebuild_position_ids(model.vision_encoder, target)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"{where}: tensors left without values after loading: {leftover}")
    return model.eval()


def load_model(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[NitroGenModel, RawCheckpoint]:
    """Load a checkpoint into a ready model. Returns the model and the checkpoint's parts."""
    raw = read_checkpoint(path)
    model = model_from_checkpoint(raw, device=device, dtype=dtype)
    raw.state_dict = {}  # the model holds the tensors now
    return model, raw


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    config: CheckpointConfig,
    game_mapping: GameMapping | None = None,
) -> Path:
    """Write a checkpoint atomically; the format follows the suffix (``.pt`` or ``.safetensors``)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            meta = {"format": SAFETENSORS_FORMAT, "ckpt_config": json.dumps(config.to_dict())}
            if game_mapping is not None:
                meta["game_mapping"] = json.dumps(game_mapping)
            save_safetensors(tensors, str(tmp), metadata=meta)
        elif path.suffix in (".pt", ".pth", ".bin"):
            obj: dict[str, Any] = {"ckpt_config": config.to_dict(), "model": tensors}
            if game_mapping is not None:
                obj["game_mapping"] = dict(game_mapping)
            torch.save(obj, tmp)
        else:
            raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .pt or .safetensors")
    return path


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Convert between ``.pt`` and ``.safetensors``, keeping the config and game mapping."""
    raw = read_checkpoint(src)
    # Building on meta validates keys and shapes without allocating weights.
    vision = vision_spec_for(raw)
    meta_model = build_model(raw.config, vision, len(raw.game_mapping) if raw.game_mapping else None, device="meta")
    _check_state_dict(meta_model, raw.state_dict, str(src))
    return save_checkpoint(dst, raw.state_dict, raw.config, raw.game_mapping)


COMPONENTS: dict[str, str] = {
    "vision_encoder": "vision tower (SigLIP)",
    "vl_self_attention_model": "VL mixer",
    "model": "DiT",
    "action_encoder": "action encoder",
    "action_decoder": "action decoder",
    "position_embedding": "action position embedding",
    "game_embedding": "game embedding",
}
"""Top-level state-dict prefixes and what they are, for ``nitrogen info``."""


def parameter_counts(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Parameters per top-level component, from the state-dict shapes (no model is built)."""
    counts: dict[str, int] = defaultdict(int)
    for key, shape in shapes.items():
        if key.endswith(".pe") or key.endswith("position_ids"):
            continue  # fixed sinusoidal tables are buffers, not parameters
        n = 1
        for d in shape:
            n *= d
        counts[key.split(".", 1)[0]] += n
    return dict(counts)
