"""Checkpoint I/O: the released ``.pt`` format and ``.safetensors``, both ways.

A released checkpoint is a ``torch.save`` of plain data::

    {"ckpt_config": dict, "model": state_dict, "game_mapping": dict[str, int]  # optional}

It is read with ``torch.load(weights_only=True)``, memory-mapped where the file allows, and the
weights are assigned into a model built on the meta device, so loading never holds two full copies.
In ``.safetensors`` files the config and game mapping live in the metadata as JSON.
Writes are atomic (:func:`nitrogen.atomic.atomic_path`: a temporary file beside the target, fsynced,
then renamed over it).

Reading validates everything a file claims before any tensor data is copied, converted or
materialised, so a hostile file of plain data fails fast with a :class:`CheckpointError` naming
what is wrong:

* the config and game mapping are JSON-like data at most :data:`MAX_CONFIG_DEPTH` deep and
  :data:`MAX_CONFIG_NODES` large (safetensors metadata is scanned for depth before it is parsed),
  and every size in the config is bounded (:mod:`nitrogen.model.configuration`);
* the parameter count the config implies, estimated without building anything
  (:func:`estimate_parameters`), is at most :data:`MAX_PARAMETERS`;
* every tensor is a dense CPU tensor of a floating-point dtype whose strides neither overlap nor
  repeat (no stride-0 expanded views), whose storage holds all the elements its shape needs, and
  which shares no bytes with another tensor of the file;
* the state dict's keys and shapes are exactly those the config implies (the model is built on the
  meta device to know them, which allocates nothing).
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import struct
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import save_file as save_safetensors

from ..atomic import atomic_path
from ..errors import CheckpointError
from .configuration import CheckpointConfig, TransformerConfig
from .hub import local_checkpoint_path
from .modeling import NitroGenModel
from .vision import PREFIX as VISION_PREFIX
from .vision import VisionSpec, lookup_spec, rebuild_position_ids, spec_from_weights

SAFETENSORS_FORMAT = "nitrogen"
GameMapping = dict[str, int]

MAX_PARAMETERS = 10_000_000_000
"""Largest model a checkpoint may describe (the released one has 0.49 billion parameters)."""
MAX_CONFIG_DEPTH = 32
"""Deepest nesting of containers in a ``ckpt_config`` or ``game_mapping`` (the released config: 3)."""
MAX_CONFIG_NODES = 100_000
"""Most values (containers and scalars) in a ``ckpt_config`` or ``game_mapping``."""
MAX_METADATA_CHARS = 1 << 20
"""Longest JSON text of one safetensors metadata entry."""
MAX_SAFETENSORS_HEADER = 16 << 20
"""Largest safetensors JSON header, read before the safetensors library parses it (the released
model's would be about 70 KB)."""
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
"""The dtypes a checkpoint's tensors may have."""
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
_GAME_KEY = "game_embedding.weight"
_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass
class RawCheckpoint:
    """A checkpoint's parts, validated but not yet turned into a model."""

    config: CheckpointConfig
    state_dict: dict[str, torch.Tensor]
    game_mapping: GameMapping | None
    path: Path | None = None


def _name(key: object, limit: int = 120) -> str:
    """A key for an error message, cut short: hostile files may hold megabyte-long names."""
    text = str(key)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_plain_data(obj: Any, what: str, where: str) -> None:
    """``obj`` is JSON-like (dicts, lists, tuples, scalars), not too deep nor too big; iterative, so
    a hostile nesting cannot overflow the stack, and bounded, so a cycle cannot loop forever."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_NODES:
            raise CheckpointError(f"{where}: {what} holds more than {MAX_CONFIG_NODES} values")
        if isinstance(item, _JSON_SCALARS):
            continue
        if isinstance(item, Mapping):
            children: Any = itertools.chain(item.keys(), item.values())
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            raise CheckpointError(f"{where}: {what} holds a {type(item).__name__}; only JSON-like data is allowed")
        if depth >= MAX_CONFIG_DEPTH:
            raise CheckpointError(f"{where}: {what} is nested more than {MAX_CONFIG_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


_JSON_ESCAPE = re.compile(r"\\.", re.DOTALL)
_JSON_STRING = re.compile(r'"[^"]*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest, found without parsing it (linear time)."""
    bare = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", _JSON_ESCAPE.sub("", text)))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, bare)), default=0)


def _parse_metadata_json(text: str, key: str, where: str) -> Any:
    """One safetensors metadata entry as JSON, with its size and depth bounded before parsing."""
    if len(text) > MAX_METADATA_CHARS:
        raise CheckpointError(f"{where}: metadata {key!r} is {len(text)} characters long, over {MAX_METADATA_CHARS}")
    if _json_depth(text) > MAX_CONFIG_DEPTH:
        raise CheckpointError(f"{where}: metadata {key!r} is nested more than {MAX_CONFIG_DEPTH} levels deep")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError, as are over-long integers
        raise CheckpointError(f"{where}: metadata {key!r} is not valid JSON ({_name(exc, 200)})") from None
    _check_plain_data(value, f"metadata {key!r}", where)
    return value


def _validate_config(raw: Any, where: str) -> CheckpointConfig:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: 'ckpt_config' must be a dict, got {type(raw).__name__}")
    _check_plain_data(raw, "'ckpt_config'", where)
    try:
        return CheckpointConfig.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(_name(p, 60) for p in e['loc'])}: {_name(e['msg'], 300)}" for e in exc.errors()[:8]
        )
        raise CheckpointError(f"{where}: invalid ckpt_config: {problems}") from None


def _validate_game_mapping(raw: Any, where: str) -> GameMapping | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raise CheckpointError(f"{where}: 'game_mapping' must map game names to integer ids")
    _check_plain_data(raw, "'game_mapping'", where)
    if not all(isinstance(k, (str, int, type(None))) for k in raw):
        raise CheckpointError(f"{where}: 'game_mapping' names must be strings")
    # The unconditional game may be stored as None by older tools; it is "" here.
    mapping = {("" if k is None else str(k)): int(v) for k, v in raw.items()}
    if len(mapping) != len(raw) or sorted(mapping.values()) != list(range(len(mapping))):
        ids = sorted(mapping.values())
        shown = ", ".join(map(str, ids[:16])) + (" ..." if len(ids) > 16 else "")
        raise CheckpointError(f"{where}: game ids must be 0..{len(mapping) - 1} without gaps, got [{shown}]")
    return mapping


def _check_layout(key: str, tensor: torch.Tensor, where: str) -> tuple[int, int, int] | None:
    """Refuse a tensor whose memory layout could make it grow when copied; metadata only, no data read.

    Returns its ``(storage id, first byte, end byte)`` for the aliasing check, or None if it is empty.
    """
    name = _name(key)
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise CheckpointError(
            f"{where}: {name} is a {tensor.layout} tensor on {tensor.device}; only dense tensors load"
        )
    if tensor.dtype not in WEIGHT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in WEIGHT_DTYPES)
        raise CheckpointError(
            f"{where}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; expected {allowed}"
        )
    if tensor.numel() == 0:
        return None
    shape, stride = tuple(tensor.shape), tensor.stride()
    # Walk the dims from the innermost stride out: each must step past everything the inner ones
    # cover, or two indices would share an element (stride 0 is the extreme: an expanded view).
    covered = 1
    for step, size in sorted((st, sz) for sz, st in zip(shape, stride, strict=True) if sz > 1):
        if step < covered:
            kind = "stride 0 (an expanded view)" if step == 0 else "overlapping strides"
            raise CheckpointError(
                f"{where}: {name} has {kind}: shape {shape}, stride {stride}; only tensors whose elements "
                "are each stored once load"
            )
        covered = step * size
    storage = tensor.untyped_storage()
    itemsize = tensor.element_size()
    needed = tensor.storage_offset() + 1 + sum((sz - 1) * st for sz, st in zip(shape, stride, strict=True))
    held = storage.nbytes() // itemsize
    if needed > held:
        raise CheckpointError(
            f"{where}: {name} has shape {shape}, which needs {needed} elements, but its storage holds {held}"
        )
    return storage.data_ptr(), tensor.storage_offset() * itemsize, needed * itemsize


def _check_tensors(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Every tensor's layout, and that no two tensors share bytes (which would multiply on a copy)."""
    spans: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for key, tensor in state.items():
        span = _check_layout(key, tensor, where)
        if span is not None:
            storage, first, end = span
            spans[storage].append((first, end, key))
    for ranges in spans.values():
        ranges.sort()
        for (_, end, before), (first, _, after) in itertools.pairwise(ranges):
            if first < end:
                raise CheckpointError(f"{where}: {_name(after)} shares its data with {_name(before)}")


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
    """Read and validate a ``.pt`` or ``.safetensors`` checkpoint (no model is built).

    ``path`` may be a hub name, ``hf://OWNER/REPO[/FILE][@REVISION]`` (:mod:`nitrogen.model.hub`).
    Everything in the module docstring is checked before any tensor data is copied; a
    :class:`CheckpointError` names the file and the key or field at fault.
    """
    path = local_checkpoint_path(path)  # an hf://OWNER/REPO[/FILE][@REVISION] name: from the HF cache
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    where = str(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict with 'ckpt_config' and 'model', got {type(obj).__name__}")
    for key in ("ckpt_config", "model"):
        if key not in obj:
            names = sorted(_name(k, 40) for k in itertools.islice(obj, 16))
            raise CheckpointError(f"{path}: missing top-level key {key!r} (found {names})")
    state = obj["model"]
    if (
        not isinstance(state, Mapping)
        or not all(isinstance(k, str) for k in state)
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(f"{path}: 'model' must be a state dict of tensors")
    config = _validate_config(obj["ckpt_config"], where)
    mapping = _validate_game_mapping(obj.get("game_mapping"), where)
    state = dict(state)
    _check_tensors(state, where)
    check_shapes(config, {k: tuple(v.shape) for k, v in state.items()}, mapping, where)
    return RawCheckpoint(config=config, state_dict=state, game_mapping=mapping, path=path)


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import safe_open

    where = str(path)
    try:
        with open(path, "rb") as raw_file:
            prefix = raw_file.read(8)
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    header_bytes = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
    if header_bytes > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(
            f"{path}: safetensors header of {header_bytes} bytes is over the limit of {MAX_SAFETENSORS_HEADER}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "ckpt_config" not in meta:
                raise CheckpointError(
                    f"{path}: safetensors metadata has no 'ckpt_config'; is this a NitroGen checkpoint?"
                )
            config = _validate_config(_parse_metadata_json(meta["ckpt_config"], "ckpt_config", where), where)
            mapping = None
            if "game_mapping" in meta:
                mapping = _parse_metadata_json(meta["game_mapping"], "game_mapping", where)
            mapping = _validate_game_mapping(mapping, where)
            # The header gives every shape and dtype; the format itself keeps tensors dense and
            # disjoint. Check them all before reading any tensor data.
            shapes: dict[str, tuple[int, ...]] = {}
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                info = f.get_slice(key)
                dtype = info.get_dtype()
                if dtype not in _SAFETENSORS_DTYPES:
                    allowed = ", ".join(_SAFETENSORS_DTYPES)
                    raise CheckpointError(f"{where}: {_name(key)} has dtype {dtype}; expected {allowed}")
                shapes[key] = tuple(info.get_shape())
            check_shapes(config, shapes, mapping, where)
            state = {key: f.get_tensor(key) for key in shapes}
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_name(exc, 300)})") from None
    return RawCheckpoint(config=config, state_dict=state, game_mapping=mapping, path=path)


def vision_spec_for(raw: RawCheckpoint) -> VisionSpec:
    """The vision tower's architecture: registered by name, geometry read from the weights."""
    return _vision_spec(raw.config, {k: tuple(v.shape) for k, v in raw.state_dict.items()})


def _vision_spec(config: CheckpointConfig, shapes: Mapping[str, tuple[int, ...]]) -> VisionSpec:
    mcfg = config.model_cfg
    tower = {k: v for k, v in shapes.items() if k.startswith(VISION_PREFIX)}
    heads = getattr(mcfg, "vision_num_heads", None) or mcfg.vl_self_attention_cfg.num_attention_heads
    return spec_from_weights(mcfg.vision_encoder_name, tower, reduced_heads=heads)


def _transformer_parameters(cfg: TransformerConfig, *, adaptive: bool, affine: bool, context_dims: list[int]) -> int:
    """Parameters (and sinusoidal tables) of a stack of :class:`~nitrogen.model.layers.TransformerBlock`."""
    d, bias = cfg.inner_dim, int(cfg.attention_bias)
    per_block = (
        (d * d + d * bias)
        + (d * d + d)  # to_q, to_out
        + (2 * d * d + 2 * d if adaptive else 2 * d * int(affine))  # norm1: AdaLN linear, or LayerNorm
        + 2 * d * int(affine)  # norm3
        + (d * 4 * d + 4 * d)
        + (4 * d * d + d)  # feed-forward
        + (cfg.max_num_positional_embeddings * d if cfg.positional_embeddings == "sinusoidal" else 0)
    )
    return sum(per_block + 2 * (c * d + d * bias) for c in context_dims)  # + to_k, to_v from the context


def estimate_parameters(config: CheckpointConfig, vision: VisionSpec, num_games: int | None = None) -> int:
    """The state dict's element count that ``config`` implies, from the config alone (nothing built).

    Exact for NitroGen's own modules, within a fraction of a percent for the SigLIP tower (whose
    small terms depend on the transformers version). Used to refuse absurd models up front.
    """
    mcfg = config.model_cfg
    dit, mixer = mcfg.diffusion_model_cfg, mcfg.vl_self_attention_cfg
    D, A, E = mcfg.hidden_size, mcfg.action_dim, mcfg.max_num_embodiments
    cross = dit.cross_attention_dim or dit.inner_dim
    total = _transformer_parameters(
        dit,
        adaptive=True,
        affine=dit.norm_elementwise_affine,
        context_dims=[cross if dit.is_cross_attention_block(i) else dit.inner_dim for i in range(dit.num_layers)],
    )
    w = dit.inner_dim
    total += (256 * w + w) + (w * w + w) + (w * 2 * w + 2 * w) + (w * dit.output_dim + dit.output_dim)
    total += _transformer_parameters(
        mixer, adaptive=False, affine=True, context_dims=[mixer.inner_dim] * mixer.num_layers
    )
    total += E * ((A * D + D) + (2 * D * D + D) + (D * D + D))  # action encoder W1, W2, W3
    total += E * ((D * D + D) + (D * A + A))  # action decoder
    total += mcfg.max_seq_len * D if mcfg.add_pos_embed else 0
    total += (num_games or 0) * mcfg.vision_hidden_size
    h, m, p = vision.hidden_size, vision.mlp_size, vision.patch_size
    layer = 4 * (h * h + h) + 2 * (h * m) + m + h + 4 * h  # attention, MLP, two LayerNorms
    pooling_head = h + (4 * h * h + 4 * h) + 2 * h + 2 * (h * m) + m + h
    total += vision.num_layers * layer + (3 * p * p * h + h) + vision.tokens_per_frame * h + 2 * h + pooling_head
    return total


def _check_budget(config: CheckpointConfig, vision: VisionSpec, num_games: int | None) -> None:
    n = estimate_parameters(config, vision, num_games)
    if n > MAX_PARAMETERS:
        raise ValueError(f"the config describes about {n:,} parameters, over the limit of {MAX_PARAMETERS:,}")


def build_model(
    config: CheckpointConfig,
    vision: VisionSpec | None = None,
    num_games: int | None = None,
    device: torch.device | str | None = None,
) -> NitroGenModel:
    """A model for ``config`` with random weights; on ``device="meta"`` it takes no memory.

    Raises ``ValueError`` before building anything if the model would exceed :data:`MAX_PARAMETERS`.
    """
    vision = vision or lookup_spec(config.model_cfg.vision_encoder_name)
    _check_budget(config, vision, num_games)
    with torch.device(device or "cpu"):
        model = NitroGenModel(config, vision, num_games=num_games)
    return model


def _meta_model(
    config: CheckpointConfig, shapes: Mapping[str, tuple[int, ...]], game_mapping: GameMapping | None, where: str
) -> NitroGenModel:
    """The model ``config`` describes, on the meta device (no memory), after the parameter budget."""
    if game_mapping is None and _GAME_KEY in shapes:
        raise CheckpointError(f"{where}: has a game embedding but no 'game_mapping' to name its games")
    try:
        vision = _vision_spec(config, shapes)
    except CheckpointError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    num_games = len(game_mapping) if game_mapping is not None else None
    try:
        return build_model(config, vision, num_games, device="meta")
    except ValueError as exc:
        raise CheckpointError(f"{where}: cannot build the model from its ckpt_config: {exc}") from None


def check_shapes(
    config: CheckpointConfig,
    shapes: Mapping[str, tuple[int, ...]],
    game_mapping: GameMapping | None = None,
    where: str = "checkpoint",
) -> None:
    """The state-dict ``shapes`` are exactly those ``config`` implies, or a :class:`CheckpointError`
    names the missing, unexpected and mismatched keys. Nothing is allocated."""
    model = _meta_model(config, shapes, game_mapping, where)
    _compare_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes, where)


def _compare_shapes(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], where: str) -> None:
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
        shown = ", ".join(_name(k) for k in unexpected[:8])
        problems.append(f"{len(unexpected)} unexpected key(s): {shown}{' ...' if len(unexpected) > 8 else ''}")
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
    shapes = {k: tuple(v.shape) for k, v in raw.state_dict.items()}
    model = _meta_model(raw.config, shapes, raw.game_mapping, where)
    _compare_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes, where)
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
    raw = read_checkpoint(src)  # validates keys and shapes against the config, allocating nothing
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
        if key.endswith((".pe", "position_ids")):
            continue  # fixed sinusoidal tables are buffers, not parameters
        n = 1
        for d in shape:
            n *= d
        counts[key.split(".", 1)[0]] += n
    return dict(counts)
