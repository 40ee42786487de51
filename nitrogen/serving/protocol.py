"""The server's wire format: versioned msgpack, with numpy arrays as raw bytes plus dtype and shape.

Light on purpose: it needs only numpy and msgpack, so the client imports it without torch.

Every message is one msgpack map. Arrays travel as ``{"__nd__": 1, "dtype": str, "shape": [..],
"data": bytes}``; only the dtypes in :data:`ALLOWED_DTYPES` decode, object arrays never, and an
array's shape must account for its bytes exactly before it is viewed. A request::

    {"v": 1, "type": "predict" | "reset" | "info" | "ping", "id": any,
     "frame": uint8 (H, W, 3),                          # predict only
     "noise": float32 (H, 25), "seed": int,             # optional, for reproducible sampling
     "game": str | int, "cfg_scale": float}             # optional per-session overrides

A reply carries ``"status": "ok"`` and timing (``server_ms``, ``queue_ms``), or
``"status": "error"`` with an ``"error"`` message saying what was wrong. A predict reply also has
``"pred": {"action_tensor": float32 (H, 25)}`` (decoded with
:meth:`nitrogen.policy.ActionChunk.from_action_tensor`) and ``"batch_size"``; an info reply has
``"info"``, a map :meth:`nitrogen.policy.PolicySpec.from_info` reads.

Only wire-level checks live here: message structure, field types, the dtype allow-list and size
budgets (:data:`MAX_FRAME_SIDE` is the one limit of :mod:`nitrogen.inference.preprocessing`). What a
frame must be (uint8 RGB, non-empty) is checked once per side by
:func:`~nitrogen.inference.preprocessing.as_rgb_frame`: in the client before sending, in the
server's engine before the tower.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from ..inference.preprocessing import MAX_FRAME_SIDE

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_ARRAY_DIMS",
    "MAX_FRAME_SIDE",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "ProtocolError",
    "decode",
    "encode",
    "error",
    "ok",
    "validate_request",
]

PROTOCOL_VERSION = 1
REQUEST_TYPES = ("predict", "reset", "info", "ping")
ALLOWED_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"})
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Refused by ZeroMQ itself (``ZMQ_MAXMSGSIZE``) before it reaches the decoder."""
MAX_ARRAY_DIMS = 4
_ND = "__nd__"


class ProtocolError(ValueError):
    """A message that is not a valid request or reply; the text says what is wrong."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"arrays of dtype {obj.dtype} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
        arr = np.ascontiguousarray(obj)
        return {_ND: 1, "dtype": arr.dtype.name, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _array_from(spec: dict[Any, Any]) -> np.ndarray:
    dtype, shape, data = spec.get("dtype"), spec.get("shape"), spec.get("data")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_ARRAY_DIMS:
        raise ProtocolError(f"array shape must be a list of at most {MAX_ARRAY_DIMS} sizes, got {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_MESSAGE_BYTES for d in shape):
        raise ProtocolError(f"array shape has an invalid size: {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError("array data must be bytes")
    itemsize = np.dtype(dtype).itemsize
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if expected != len(data):
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _object_hook(obj: dict[Any, Any]) -> Any:
    if obj.get(_ND) == 1:
        return _array_from(obj)
    return obj


def encode(message: dict[str, Any]) -> bytes:
    """Serialise a message; numpy arrays become raw bytes with their dtype and shape."""
    return msgpack.packb(message, default=_pack_default, use_bin_type=True)


def decode(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Parse one message, refusing anything that is not a well-formed map."""
    if len(payload) > max_bytes:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = msgpack.unpackb(
            payload,
            object_hook=_object_hook,
            raw=False,
            strict_map_key=True,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as exc:
        raise ProtocolError(f"not a valid msgpack message ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a map, got {type(obj).__name__}")
    return obj


def validate_request(msg: dict[str, Any]) -> dict[str, Any]:
    """Check a decoded request's version, type and field types; return it unchanged.

    A predict ``frame`` must be an array whose sides fit :data:`MAX_FRAME_SIDE`; its dtype, channels
    and emptiness are the engine's to check (:func:`~nitrogen.inference.preprocessing.as_rgb_frame`).
    """
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r}; this server speaks {PROTOCOL_VERSION}")
    kind = msg.get("type")
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type {kind!r}; expected one of {list(REQUEST_TYPES)}")
    if kind == "predict":
        frame = msg.get("frame")
        if not isinstance(frame, np.ndarray):
            raise ProtocolError("predict needs 'frame', a uint8 (H, W, 3) array")
        if any(side > MAX_FRAME_SIDE for side in frame.shape[:2]):
            raise ProtocolError(f"'frame' of shape {frame.shape} exceeds the {MAX_FRAME_SIDE}-pixel limit per side")
        noise = msg.get("noise")
        if noise is not None and (not isinstance(noise, np.ndarray) or noise.dtype != np.float32 or noise.ndim != 2):
            raise ProtocolError("'noise' must be a float32 (H, 25) array")
        seed = msg.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
            raise ProtocolError("'seed' must be a non-negative integer")
    game = msg.get("game")
    if game is not None and not isinstance(game, (str, int)):
        raise ProtocolError("'game' must be a name or an id")
    cfg = msg.get("cfg_scale")
    if cfg is not None and (not isinstance(cfg, (int, float)) or isinstance(cfg, bool) or not np.isfinite(cfg)):
        raise ProtocolError("'cfg_scale' must be a finite number")
    return msg


def ok(request_id: Any = None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "status": "ok", "id": request_id, **fields}


def error(message: str, request_id: Any = None) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "status": "error", "id": request_id, "error": message}
