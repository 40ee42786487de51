"""The server's wire format: versioned msgpack, with numpy arrays as raw bytes plus dtype and shape.

Light on purpose: it needs only numpy and msgpack, so the client imports it without torch.

Every message is one msgpack map. Arrays travel as ``{"__nd__": 1, "dtype": str, "shape": [..],
"data": bytes}``; only the dtypes in :data:`ALLOWED_DTYPES` decode, object arrays never, and an
array's shape must account for its bytes exactly before it is viewed. A request::

    {"v": 1, "type": "predict" | "reset" | "info" | "ping",
     "id": int | str,                                   # optional, echoed in the reply (str: at most 64 characters)
     "token": bytes,                                    # optional, 16..64 bytes: the client's session secret
     "frame": uint8 (H, W, 3),                          # predict only
     "noise": float32 (H, 25), "seed": int,             # optional, for reproducible sampling
     "prefix": float32 (k, 25), "delay": int,           # optional, real-time chunking: the previous
     "chunking": "rtc" | "prefix", "beta": float,       #   chunk on this one's grid, d frozen actions
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
server's engine before the tower. The bounds on ``cfg_scale`` and on the noise are the engine's.
A ``prefix`` is checked here for its dtype (float32), shape ``(k, 25)`` with ``1 <= k <=``
:data:`MAX_PREFIX_ROWS`, finite values, and ``delay`` (``0..k``), ``chunking`` and ``beta``
(``0..``:data:`MAX_RTC_BETA`); that ``k`` fits the model's horizon is the engine's to check.

Decoding has a bounded cost (:class:`DecodeLimits`): a request may hold at most
``max_containers`` maps and lists in all, each of at most ``max_items`` entries, and strings of at
most ``max_str_len`` characters; no extension types. So a message of many small containers is
refused after a few hundred objects instead of being built whole. Error messages never quote what
the sender sent (they name types, sizes and limits) and are cut to :data:`MAX_ERROR_CHARS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ..inference.preprocessing import MAX_FRAME_SIDE
from ..policy import CHUNKING_MODES, MAX_PREFIX_ABS, MAX_RTC_BETA

__all__ = [
    "ALLOWED_DTYPES",
    "CHUNKING_MODES",
    "MAX_ARRAY_DIMS",
    "MAX_ERROR_CHARS",
    "MAX_FRAME_SIDE",
    "MAX_ID_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_PREFIX_ABS",
    "MAX_PREFIX_ROWS",
    "MAX_RTC_BETA",
    "PROTOCOL_VERSION",
    "REPLY_LIMITS",
    "REQUEST_LIMITS",
    "REQUEST_TYPES",
    "TOKEN_BYTES",
    "DecodeLimits",
    "ProtocolError",
    "decode",
    "describe",
    "encode",
    "error",
    "ok",
    "request_id",
    "validate_request",
]

PROTOCOL_VERSION = 1
REQUEST_TYPES = ("predict", "reset", "info", "ping")
ALLOWED_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"})
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""The most bytes one message may hold, all of its frames together. ZeroMQ refuses a bigger frame
itself (``ZMQ_MAXMSGSIZE``, which is per frame); the server refuses a bigger multipart message."""
MAX_ARRAY_DIMS = 4
MAX_ID_CHARS = 64
TOKEN_BYTES = (16, 64)
"""The shortest and longest session token a request may carry."""
MAX_ERROR_CHARS = 300
"""Error messages are cut to this length, so an error reply stays far under 1 KB."""
MAX_PREFIX_ROWS = 1024
"""The most rows a ``prefix`` may have on the wire (the released model's horizon is 18)."""
_ND = "__nd__"


class ProtocolError(ValueError):
    """A message that is not a valid request or reply; the text says what is wrong."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one decoded message may hold; a message over any of them is refused while decoding."""

    max_containers: int
    """Maps and lists in the whole message, nested ones included."""
    max_items: int
    """Entries of one map or list."""
    max_str_len: int
    """Characters of one string (``bytes`` fields are bounded by the message size alone)."""


REQUEST_LIMITS = DecodeLimits(max_containers=64, max_items=64, max_str_len=1024)
"""A request is a map of a few fields and at most two arrays: far under these."""
REPLY_LIMITS = DecodeLimits(max_containers=100_000, max_items=100_000, max_str_len=1 << 20)
"""Replies (an ``info`` map lists every game and the whole checkpoint config) get more room."""


def describe(value: Any) -> str:
    """A short description of a value a peer sent, for error messages, that never quotes its text."""
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
        return text if len(text) <= 24 else f"a {len(text)}-digit {type(value).__name__}"
    if isinstance(value, str):
        return f"a {len(value)}-character string"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype.name} array of shape {value.shape}"
    return f"a {type(value).__name__}"


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
        raise ProtocolError(f"array dtype ({describe(dtype)}) is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_ARRAY_DIMS:
        raise ProtocolError(f"array shape must be a list of at most {MAX_ARRAY_DIMS} sizes, got {describe(shape)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_MESSAGE_BYTES for d in shape):
        raise ProtocolError(f"array shape must be sizes from 0 to {MAX_MESSAGE_BYTES}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"array data must be bytes, got {describe(data)}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # exact: Python integers never wrap
    if expected != len(data):
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode(message: dict[str, Any]) -> bytes:
    """Serialise a message; numpy arrays become raw bytes with their dtype and shape."""
    return msgpack.packb(message, default=_pack_default, use_bin_type=True)


def decode(payload: Any, max_bytes: int = MAX_MESSAGE_BYTES, limits: DecodeLimits = REQUEST_LIMITS) -> dict[str, Any]:
    """Parse one message (``bytes`` or any buffer), refusing anything that is not a well-formed map.

    The work is bounded by ``limits``: the decoder stops at the first container over the count.
    """
    size = memoryview(payload).nbytes
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    containers = 0

    def counted(obj: Any) -> None:
        nonlocal containers
        containers += 1
        if containers > limits.max_containers:
            raise ProtocolError(f"a message may hold at most {limits.max_containers} maps and lists")

    def list_hook(obj: list[Any]) -> list[Any]:
        counted(obj)
        return obj

    def object_hook(obj: dict[Any, Any]) -> Any:
        counted(obj)
        return _array_from(obj) if obj.get(_ND) == 1 else obj

    try:
        obj = msgpack.unpackb(
            payload,
            object_hook=object_hook,
            list_hook=list_hook,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str_len,
            max_bin_len=max_bytes,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as exc:
        raise ProtocolError(f"not a valid msgpack message within the limits ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a map, got {describe(obj)}")
    return obj


def request_id(msg: dict[str, Any]) -> int | str | None:
    """The request's ``id`` if it may be echoed (an integer, or a string of at most :data:`MAX_ID_CHARS`)."""
    rid = msg.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        return rid
    if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS:
        return rid
    return None


def validate_request(msg: dict[str, Any]) -> dict[str, Any]:
    """Check a decoded request's version, type and field types; return it unchanged.

    A predict ``frame`` must be an array whose sides fit :data:`MAX_FRAME_SIDE`; its dtype, channels
    and emptiness are the engine's to check (:func:`~nitrogen.inference.preprocessing.as_rgb_frame`),
    and so are the bounds of ``noise`` and ``cfg_scale``.
    """
    version = msg.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"unsupported protocol version ({describe(version)}); this server speaks {PROTOCOL_VERSION}"
        )
    kind = msg.get("type")
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type ({describe(kind)}); expected one of {list(REQUEST_TYPES)}")
    if msg.get("id") is not None and request_id(msg) is None:
        raise ProtocolError(f"'id' must be an integer or a string of at most {MAX_ID_CHARS} characters")
    token = msg.get("token")
    lo, hi = TOKEN_BYTES
    if token is not None and (not isinstance(token, bytes) or not lo <= len(token) <= hi):
        raise ProtocolError(f"'token' must be {lo} to {hi} bytes, got {describe(token)}")
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
        _validate_prefix(msg)
    game = msg.get("game")
    if game is not None and (not isinstance(game, (str, int)) or isinstance(game, bool)):
        raise ProtocolError("'game' must be a name or an id")
    cfg = msg.get("cfg_scale")
    if cfg is not None and (not isinstance(cfg, (int, float)) or isinstance(cfg, bool) or not np.isfinite(cfg)):
        raise ProtocolError("'cfg_scale' must be a finite number")
    return msg


def _validate_prefix(msg: dict[str, Any]) -> None:
    """The real-time chunking fields of a predict request: ``prefix``, ``delay``, ``chunking``, ``beta``."""
    prefix, delay = msg.get("prefix"), msg.get("delay")
    chunking, beta = msg.get("chunking"), msg.get("beta")
    if prefix is None:
        if any(v is not None for v in (delay, chunking, beta)):
            raise ProtocolError("'delay', 'chunking' and 'beta' need a 'prefix'")
        return
    if not isinstance(prefix, np.ndarray) or prefix.dtype != np.float32 or prefix.ndim != 2:
        raise ProtocolError("'prefix' must be a float32 (k, 25) array")
    if prefix.shape[1] != 25 or not 1 <= prefix.shape[0] <= MAX_PREFIX_ROWS:
        raise ProtocolError(f"'prefix' must have shape (k, 25) with 1 <= k <= {MAX_PREFIX_ROWS}, got {prefix.shape}")
    if not np.isfinite(prefix).all() or np.abs(prefix).max() > MAX_PREFIX_ABS:
        raise ProtocolError(f"'prefix' must hold finite values within +-{MAX_PREFIX_ABS:g}")
    if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= len(prefix)):
        raise ProtocolError("'delay' must be an integer from 0 to the prefix length")
    if chunking is not None and chunking not in CHUNKING_MODES:
        raise ProtocolError(f"'chunking' must be one of {list(CHUNKING_MODES)}")
    if beta is not None and (
        not isinstance(beta, (int, float))
        or isinstance(beta, bool)
        or not np.isfinite(beta)
        or not 0 <= beta <= MAX_RTC_BETA
    ):
        raise ProtocolError(f"'beta' must be a finite number from 0 to {MAX_RTC_BETA:g}")


def ok(request_id: Any = None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "status": "ok", "id": request_id, **fields}


def error(message: str, request_id: Any = None) -> dict[str, Any]:
    """An error reply; the message is cut to :data:`MAX_ERROR_CHARS`."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return {"v": PROTOCOL_VERSION, "status": "error", "id": request_id, "error": message}
