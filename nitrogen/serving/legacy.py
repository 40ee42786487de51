"""Opt-in compatibility with the original NitroGen client's pickled ZeroMQ messages.

The original Windows client (``play.py``) sends pickled dicts over a REQ socket::

    {"type": "predict", "image": PIL.Image.Image | uint8 (H, W, 3) ndarray}
    {"type": "reset"}
    {"type": "info"}

and expects pickled replies ``{"status": "ok", "pred": {"j_left", "j_right", "buttons"}}``,
``{"status": "ok", "info": {...}}`` or ``{"status": "error", "message": str}``. The server builds
its msgpack-style replies (whose ``pred`` is only the action tensor) and :func:`encode_legacy_reply`
turns them into these, deriving the sticks and buttons with the one codec
(:meth:`nitrogen.policy.ActionChunk.from_action_tensor`).

The original server called ``pickle.loads`` on whatever arrived, which runs arbitrary code. Here
payloads go through :func:`safe_loads`, whose unpickler resolves only an allow-list of globals
(:data:`ALLOWED_GLOBALS`): what plain containers, numbers, strings, numpy arrays and scalars and
PIL images need. Everything else is refused before it can be called. The callables it does hand
out are guarded wrappers (no huge allocations from a few bytes of pickle, no shared module-level
objects that a ``BUILD`` opcode could mutate), and object-dtype arrays are refused after loading.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "ALLOWED_GLOBALS",
    "LegacyPickleError",
    "encode_legacy_reply",
    "frame_from_legacy",
    "legacy_reply",
    "looks_like_pickle",
    "parse_legacy_request",
    "safe_loads",
]

MAX_LEGACY_BYTES = 32 * 1024 * 1024
REQUEST_TYPES = frozenset({"predict", "reset", "info"})
REPLY_PROTOCOL = 4
_PRED_KEYS = ("j_left", "j_right", "buttons")
_NP_PREFIXES = ("numpy._core.", "numpy.core.")  # numpy 2.x pickles, numpy 1.x pickles


class LegacyPickleError(ValueError):
    """A legacy (pickled) message that is refused or malformed; the text says why."""


def looks_like_pickle(payload: bytes) -> bool:
    """True when ``payload`` starts like a pickle of protocol 2..5 (``PROTO`` opcode + version).

    A lone ``b"\\x80"`` is msgpack's empty map, not a pickle.
    """
    return len(payload) > 2 and payload[0] == 0x80 and 2 <= payload[1] <= 5


# --------------------------------------------------------------------------- restricted unpickler


def _numpy_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>``, or ``numpy.core...`` on numpy 1.x."""
    for prefix in _NP_PREFIXES:
        try:
            return getattr(importlib.import_module(prefix + submodule), name)
        except (ImportError, AttributeError):
            continue
    raise LegacyPickleError(f"numpy has no {submodule}.{name}")


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` so a pickle can name the class but never call it directly."""

    __slots__ = ()


_NDARRAY_TOKEN = _NdarrayToken()


def _pil_image() -> Any:
    """The ``PIL.Image`` module, or None when Pillow is not installed (then PIL globals are refused)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


_CHECKED_IMAGE: list[type] = []


def _checked_image_class() -> type | None:
    """A ``PIL.Image.Image`` subclass whose ``__setstate__`` checks the state before allocating."""
    Image = _pil_image()
    if Image is None:
        return None
    if not _CHECKED_IMAGE:

        class _CheckedImage(Image.Image):
            def __setstate__(self, state: Any) -> None:
                if not isinstance(state, (list, tuple)) or len(state) < 5:
                    raise LegacyPickleError("PIL image state is not [info, mode, size, palette, data]")
                info, mode, size, palette, data = state[:5]
                if not (isinstance(info, dict) and isinstance(mode, str) and isinstance(data, bytes)):
                    raise LegacyPickleError("PIL image state has the wrong types")
                if not (
                    isinstance(size, (list, tuple))
                    and len(size) == 2
                    and all(type(s) is int and s >= 0 for s in size)
                    and size[0] * size[1] <= 8 * len(data)  # mode "1" packs 8 pixels a byte
                ):
                    raise LegacyPickleError(f"PIL image size {size!r} does not match its {len(data)} bytes")
                super().__setstate__([info, mode, tuple(size), palette, data])
                self.__class__ = Image.Image  # hand back a plain PIL image

        _CHECKED_IMAGE.append(_CheckedImage)
    return _CHECKED_IMAGE[0]


def _resolvers(max_bytes: int) -> dict[str, Callable[[], Any]]:
    """Allowed global name -> factory for what the unpickler gets. Closures are per call."""

    def encode(text: Any, encoding: Any) -> bytes:  # protocol 2 writes bytes as _codecs.encode(s, "latin1")
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise LegacyPickleError("_codecs.encode is allowed only as encode(str, 'latin1')")
        return text.encode("latin1")

    def empty_bytes() -> bytes:  # protocol 2 writes b"" as bytes()
        return b""

    def reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        if subtype is not _NDARRAY_TOKEN:
            raise LegacyPickleError("_reconstruct is allowed only for numpy.ndarray")
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(type(d) is int and d >= 0 for d in dims) or math.prod(dims) > max_bytes:
            raise LegacyPickleError(f"_reconstruct with shape {shape!r} refused")
        return _numpy_attr("multiarray", "_reconstruct")(np.ndarray, dims, typecode)

    def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        return _numpy_attr("numeric", "_frombuffer")(buf, dtype, shape, order)

    def scalar(*args: Any) -> Any:
        return _numpy_attr("multiarray", "scalar")(*args)

    table: dict[str, Callable[[], Any]] = {
        "builtins.set": lambda: set,
        "builtins.frozenset": lambda: frozenset,
        "builtins.complex": lambda: complex,
        "builtins.bytes": lambda: empty_bytes,
        "_codecs.encode": lambda: encode,
        "numpy.dtype": lambda: np.dtype,
        "numpy.ndarray": lambda: _NDARRAY_TOKEN,
        "PIL.Image.Image": _checked_image_class,
    }
    for prefix in _NP_PREFIXES:
        table[prefix + "multiarray._reconstruct"] = lambda: reconstruct
        table[prefix + "multiarray.scalar"] = lambda: scalar
        table[prefix + "numeric._frombuffer"] = lambda: frombuffer
    return table


ALLOWED_GLOBALS: frozenset[str] = frozenset(_resolvers(0))
"""Every global a legacy pickle may name (``__builtin__.x`` from protocol 2 counts as ``builtins.x``)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, max_bytes: int) -> None:
        super().__init__(file)
        self._allowed = _resolvers(max_bytes)

    def find_class(self, module: str, name: str) -> Any:
        # protocols 0-2 spell names the Python 2 way (__builtin__.set, commands.Popen); name them as 3.x does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        factory = self._allowed.get(qualified)
        found = factory() if factory is not None else None
        if found is None:
            raise LegacyPickleError(
                f"refused global {qualified!r}: legacy pickles may only hold plain data, numpy arrays and PIL images"
            )
        return found


def _refuse_object_arrays(root: Any) -> None:
    """Walk dicts, lists, tuples and sets; refuse any numpy array or scalar holding Python objects."""
    stack, seen = [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.hasobject:
            raise LegacyPickleError(f"refused numpy array of dtype {obj.dtype}: object arrays are not plain data")
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)


def safe_loads(payload: bytes, *, max_bytes: int = MAX_LEGACY_BYTES) -> Any:
    """Unpickle ``payload`` admitting only :data:`ALLOWED_GLOBALS`; raise :class:`LegacyPickleError` otherwise.

    Also refused: payloads over ``max_bytes``, object-dtype arrays, and anything that fails to
    unpickle (truncated or garbage data).
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LegacyPickleError(f"expected bytes, got {type(payload).__name__}")
    size = memoryview(payload).nbytes
    if size > max_bytes:
        raise LegacyPickleError(f"legacy pickle of {size} bytes is over the {max_bytes}-byte limit")
    try:
        result = _RestrictedUnpickler(io.BytesIO(payload), max_bytes).load()
    except LegacyPickleError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError, MemoryError, ...
        raise LegacyPickleError(f"not a valid legacy pickle: {type(exc).__name__}: {exc}") from exc
    _refuse_object_arrays(result)
    return result


# --------------------------------------------------------------------------- requests and replies


def frame_from_legacy(image: Any) -> np.ndarray:
    """The ``uint8 (H, W, 3)`` RGB frame of a legacy ``"image"``: a PIL image or such an ndarray."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return image
        raise LegacyPickleError(
            f"expected 'image' as a uint8 (H, W, 3) array or a PIL image, "
            f"got a {image.dtype} array of shape {image.shape}"
        )
    Image = _pil_image()
    if Image is not None and isinstance(image, Image.Image):
        try:
            return np.asarray(image.convert("RGB"))
        except Exception as exc:
            raise LegacyPickleError(f"PIL image could not be converted to RGB: {exc}") from exc
    raise LegacyPickleError(f"expected 'image' as a uint8 (H, W, 3) array or a PIL image, got {type(image).__name__}")


def parse_legacy_request(payload: bytes) -> dict[str, Any]:
    """Decode a legacy request to ``{"type": "predict", "frame": ndarray}`` or ``{"type": "reset" | "info"}``."""
    request = safe_loads(payload)
    if not isinstance(request, dict):
        raise LegacyPickleError(f"expected a dict request, got {type(request).__name__}")
    kind = request.get("type")
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        raise LegacyPickleError(f"expected 'type' to be one of {sorted(REQUEST_TYPES)}, got {kind!r}")
    if kind != "predict":
        return {"type": kind}
    if "image" not in request:
        raise LegacyPickleError("predict request has no 'image': expected a uint8 (H, W, 3) array or a PIL image")
    return {"type": "predict", "frame": frame_from_legacy(request["image"])}


def legacy_reply(
    status: str = "ok",
    *,
    pred: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    message: str | None = None,
) -> bytes:
    """A pickled reply in the shape the original client reads.

    ``pred`` may be any mapping with ``j_left``, ``j_right`` and ``buttons`` (e.g. an action chunk);
    only those three keys are sent, as numpy arrays.
    """
    reply: dict[str, Any] = {"status": status}
    if status == "error":
        if message is None or pred is not None or info is not None:
            raise ValueError("an error reply takes a message and nothing else")
        reply["message"] = str(message)
    elif status == "ok":
        if message is not None:
            raise ValueError("an ok reply takes no message")
        if pred is not None:
            missing = [k for k in _PRED_KEYS if k not in pred]
            if missing:
                raise ValueError(f"pred lacks {missing}")
            reply["pred"] = {k: np.asarray(pred[k]) for k in _PRED_KEYS}
        if info is not None:
            reply["info"] = dict(info)
    else:
        raise ValueError(f"status must be 'ok' or 'error', got {status!r}")
    return pickle.dumps(reply, protocol=REPLY_PROTOCOL)


def encode_legacy_reply(reply: Mapping[str, Any]) -> bytes:
    """A server reply (:mod:`nitrogen.serving.protocol` shape) as the pickle the original client reads.

    An error keeps its message; a predict reply's ``pred["action_tensor"]`` becomes ``j_left``,
    ``j_right`` and ``buttons``; any other ok reply sends its ``info`` (empty for reset and ping).
    """
    from ..policy import ActionChunk

    if reply.get("status") != "ok":
        return legacy_reply("error", message=str(reply.get("error")))
    if "pred" in reply:
        return legacy_reply(pred=ActionChunk.from_action_tensor(reply["pred"]["action_tensor"]))
    return legacy_reply(info=reply.get("info", {}))
