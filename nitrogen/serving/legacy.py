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

The original server called ``pickle.loads`` on whatever arrived, which runs arbitrary code. Here a
payload goes through :func:`safe_loads`, in three steps, and numpy and PIL never see pickle state:

1. **Scan.** The opcode stream is read (never executed) first: only the opcodes that protocols 2-5
   write for plain data are admitted, at most :data:`MAX_OPCODES` of them; every length must fit
   in the payload and every memo index must be small, so no opcode can make the unpickler allocate
   more than the payload holds.
2. **Unpickle into inert tokens.** The restricted unpickler resolves only :data:`ALLOWED_GLOBALS`,
   and none of them is the real thing: ``numpy.dtype``, ``_reconstruct``, ``_frombuffer``,
   ``scalar`` and ``PIL.Image.Image`` give tokens of this module whose construction and ``BUILD``
   only record plain data (a dtype *name* from :data:`ARRAY_DTYPES` and a byte order, a shape of
   ints, raw bytes, an image mode and size). ``BUILD`` on anything else is refused.
3. **Rebuild.** The result is walked (at most :data:`MAX_DEPTH` deep, no cycles) and every token
   becomes a fresh object made from validated plain data: ``np.frombuffer(raw, fresh_dtype)``
   copied into a new array once its dimensions and byte size are checked, ``Image.frombytes`` for
   the modes of :data:`IMAGE_MODES` once its sides and pixel count are checked. All arrays, scalars
   and images of one message share one byte budget (``max_bytes``, 32 MiB by default; an image
   counts as the RGB frame it becomes). Anything that is not plain data is refused.

Every refusal is a :class:`LegacyPickleError` with a short message that never echoes more than a
few dozen characters of the input.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
import pickletools
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..inference.preprocessing import MAX_FRAME_SIDE

__all__ = [
    "ALLOWED_GLOBALS",
    "ARRAY_DTYPES",
    "IMAGE_MODES",
    "LegacyPickleError",
    "encode_legacy_reply",
    "frame_from_legacy",
    "legacy_reply",
    "looks_like_pickle",
    "parse_legacy_request",
    "safe_loads",
]

MAX_LEGACY_BYTES = 32 * 1024 * 1024
"""The largest legacy payload, and the byte budget of the arrays, scalars and images it rebuilds."""
MAX_OPCODES = 10_000
"""Opcodes one legacy pickle may hold (a predict request has about 40, a palette image about 800)."""
MAX_DEPTH = 32
"""How deeply containers may nest in a legacy message."""
MAX_NDIM = 8
"""Dimensions of a legacy array."""
MAX_TEXT = 64 * 1024
"""Characters of a str, or bytes of a bytes value, that is not an array's or an image's data."""
MAX_INT_BITS = 512
"""Bits of a Python int in a legacy message."""

ARRAY_DTYPES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"})
"""The numpy dtype names (as numpy pickles them, without byte order) a legacy array or scalar may have."""
IMAGE_MODES: dict[str, int] = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "RGBA": 4}
"""The PIL modes a legacy image may have -> its bands (mode ``"1"`` packs 8 pixels a byte)."""

REQUEST_TYPES = frozenset({"predict", "reset", "info"})
REPLY_PROTOCOL = 4
_PRED_KEYS = ("j_left", "j_right", "buttons")
_NP_PREFIXES = ("numpy._core.", "numpy.core.")  # numpy 2.x pickles, numpy 1.x pickles
_MAX_NAME = 200  # characters of a GLOBAL's module or name


class LegacyPickleError(ValueError):
    """A legacy (pickled) message that is refused or malformed; the text says why."""


def looks_like_pickle(payload: bytes) -> bool:
    """True when ``payload`` starts like a pickle of protocol 2..5 (``PROTO`` opcode + version).

    A lone ``b"\\x80"`` is msgpack's empty map, not a pickle.
    """
    return len(payload) > 2 and payload[0] == 0x80 and 2 <= payload[1] <= 5


def _brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that no error echoes much of the input."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        value = value[:limit]  # cut before repr: a 30 MB string is never copied whole
    text = repr(value) if not isinstance(value, (list, tuple, dict, set, frozenset)) else _brief_container(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _brief_container(value: Any) -> str:
    """A short container's repr when it holds only numbers (a shape), else its type and length."""
    if isinstance(value, (tuple, list)) and len(value) <= 8 and all(type(v) in (int, float, bool) for v in value):
        return repr(value)  # at most 8 numbers; an int here can be long, and _brief cuts the text
    return f"{type(value).__name__} of {len(value)}"


# --------------------------------------------------------------------------- 1. scan the opcodes

# opcode -> how its argument is laid out: a fixed byte count, ("len", n) for an n-byte little-endian
# length followed by that many bytes, or "lines2" for GLOBAL's two newline-terminated names.
_LEN1, _LEN4, _LEN8 = ("len", 1), ("len", 4), ("len", 8)
_ADMITTED_OPCODES: dict[int, int | tuple[str, int] | str] = {
    op[0]: layout
    for op, layout in [
        (pickle.PROTO, 1),
        (pickle.FRAME, 8),
        (pickle.STOP, 0),
        (pickle.MARK, 0),
        (pickle.POP, 0),
        (pickle.POP_MARK, 0),
        (pickle.NONE, 0),
        (pickle.NEWTRUE, 0),
        (pickle.NEWFALSE, 0),
        (pickle.BININT, 4),
        (pickle.BININT1, 1),
        (pickle.BININT2, 2),
        (pickle.LONG1, _LEN1),
        (pickle.BINFLOAT, 8),
        (pickle.SHORT_BINSTRING, _LEN1),
        (pickle.BINSTRING, _LEN4),
        (pickle.SHORT_BINBYTES, _LEN1),
        (pickle.BINBYTES, _LEN4),
        (pickle.BINBYTES8, _LEN8),
        (pickle.BYTEARRAY8, _LEN8),
        (pickle.SHORT_BINUNICODE, _LEN1),
        (pickle.BINUNICODE, _LEN4),
        (pickle.BINUNICODE8, _LEN8),
        (pickle.EMPTY_TUPLE, 0),
        (pickle.TUPLE, 0),
        (pickle.TUPLE1, 0),
        (pickle.TUPLE2, 0),
        (pickle.TUPLE3, 0),
        (pickle.EMPTY_LIST, 0),
        (pickle.APPEND, 0),
        (pickle.APPENDS, 0),
        (pickle.EMPTY_DICT, 0),
        (pickle.SETITEM, 0),
        (pickle.SETITEMS, 0),
        (pickle.EMPTY_SET, 0),
        (pickle.ADDITEMS, 0),
        (pickle.FROZENSET, 0),
        (pickle.GLOBAL, "lines2"),
        (pickle.STACK_GLOBAL, 0),
        (pickle.REDUCE, 0),
        (pickle.BUILD, 0),
        (pickle.NEWOBJ, 0),
        (pickle.MEMOIZE, 0),
        (pickle.BINPUT, 1),
        (pickle.LONG_BINPUT, 4),
        (pickle.BINGET, 1),
        (pickle.LONG_BINGET, 4),
    ]
}
"""What protocols 2-5 write for plain data, numpy arrays and PIL images. Refused, among others: the
text opcodes of protocol 0, persistent ids, the extension registry, INST/OBJ/NEWOBJ_EX, LONG4 and
out-of-band buffers."""
_OPCODE_NAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}
_MEMO_INDEX_OPCODES = frozenset({pickle.LONG_BINPUT[0], pickle.LONG_BINGET[0]})


def _scan(payload: bytes) -> None:
    """Check the opcode stream of ``payload`` without running it; raise :class:`LegacyPickleError`.

    Stops at ``STOP`` (after which nothing may follow) or after :data:`MAX_OPCODES` opcodes.
    """
    end, pos, count = len(payload), 0, 0
    if not looks_like_pickle(payload):
        raise LegacyPickleError("not a valid legacy pickle: it does not start with PROTO 2..5")
    while True:
        if pos >= end:
            raise LegacyPickleError("not a valid legacy pickle: truncated (no STOP opcode)")
        code = payload[pos]
        count += 1
        if count > MAX_OPCODES:
            raise LegacyPickleError(f"legacy pickle refused: it has over {MAX_OPCODES} opcodes")
        layout = _ADMITTED_OPCODES.get(code)
        if layout is None:
            name = _OPCODE_NAMES.get(code)
            if name is None:
                raise LegacyPickleError(f"not a valid legacy pickle: unknown opcode {code:#04x} at byte {pos}")
            raise LegacyPickleError(
                f"not a valid legacy pickle: refused opcode {name} at byte {pos} "
                "(only what protocols 2-5 write for plain data is admitted)"
            )
        pos += 1
        if isinstance(layout, int):
            if pos + layout > end:
                raise LegacyPickleError("not a valid legacy pickle: truncated")
            if code in _MEMO_INDEX_OPCODES and struct.unpack_from("<I", payload, pos)[0] >= MAX_OPCODES:
                raise LegacyPickleError(f"refused memo index at byte {pos - 1}: a legacy pickle's memo is small")
            if code == pickle.FRAME[0] and struct.unpack_from("<Q", payload, pos)[0] > end - pos - layout:
                raise LegacyPickleError("not a valid legacy pickle: truncated (frame longer than the payload)")
            pos += layout
        elif layout == "lines2":
            for _ in range(2):
                newline = payload.find(b"\n", pos, pos + _MAX_NAME + 1)
                if newline < 0:
                    raise LegacyPickleError("not a valid legacy pickle: GLOBAL name too long or truncated")
                pos = newline + 1
        else:
            width = layout[1]
            if pos + width > end:
                raise LegacyPickleError("not a valid legacy pickle: truncated")
            size = int.from_bytes(payload[pos : pos + width], "little", signed=code == pickle.BINSTRING[0])
            pos += width
            if not 0 <= size <= end - pos:
                raise LegacyPickleError(f"not a valid legacy pickle: a length of {size} at byte {pos - width} overruns")
            pos += size
        if code == pickle.STOP[0]:
            if pos != end:
                raise LegacyPickleError(f"not a valid legacy pickle: {end - pos} bytes after STOP")
            return


# --------------------------------------------------------------------------- 2. inert tokens


class _Budget:
    """What one message may still cost: bytes of the arrays, scalars and images it rebuilds, bytes that
    ``_codecs.encode`` makes while unpickling, and items that ``set(...)`` copies."""

    __slots__ = ("bytes_left", "encoded_left", "items_left")

    def __init__(self, max_bytes: int) -> None:
        self.bytes_left = self.encoded_left = max_bytes
        self.items_left = MAX_OPCODES

    def spend_bytes(self, nbytes: int, what: str) -> None:
        if nbytes > self.bytes_left:
            raise LegacyPickleError(f"{what} of {nbytes} bytes is over the legacy message's byte budget")
        self.bytes_left -= nbytes

    def spend_encoded(self, nbytes: int) -> None:
        if nbytes > self.encoded_left:
            raise LegacyPickleError(f"_codecs.encode of {nbytes} bytes is over the legacy message's byte budget")
        self.encoded_left -= nbytes

    def spend_items(self, count: int, what: str) -> None:
        if count > self.items_left:
            raise LegacyPickleError(f"{what} of {count} items is over the legacy message's item budget")
        self.items_left -= count


class _Token:
    """Base of what the unpickler hands out: records plain data, refuses ``BUILD`` unless it expects one."""

    __slots__ = ()
    what = "object"

    def __setstate__(self, state: Any) -> None:
        raise LegacyPickleError(f"refused BUILD on {self.what}: legacy pickles may not set state on it")


class _Global(_Token):
    """An allowed global as the unpickler sees it: a guarded function, never the real callable."""

    __slots__ = ("_call", "name")

    def __init__(self, name: str, call: Callable[..., Any] | None) -> None:
        self.name, self._call = name, call

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"global {self.name!r}"

    def __call__(self, *args: Any) -> Any:
        if self._call is None:
            raise LegacyPickleError(f"refused call of global {self.name!r}: it is only a marker")
        return self._call(*args)


class _Dtype(_Token):
    """``numpy.dtype(name, align, copy)`` then ``BUILD (3, byteorder, None, None, None, ...)``: a name and an order."""

    __slots__ = ("_built", "byteorder", "name")
    what = "numpy dtype"

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(name, str) or name not in ARRAY_DTYPES:
            kind = " (object)" if name == "O" else ""
            raise LegacyPickleError(
                f"refused numpy dtype {_brief(name, 20) if isinstance(name, str) else 'given as a ' + type(name).__name__}"
                f"{kind}: legacy arrays may only have the plain number dtypes "
                f"{', '.join(sorted(ARRAY_DTYPES))} (no object, structured or subarray dtypes)"
            )
        if type(align) is not bool or type(copy) is not bool:
            raise LegacyPickleError("numpy.dtype is allowed only as dtype(name, align: bool, copy: bool)")
        self.name, self.byteorder, self._built = name, "=", False

    def __setstate__(self, state: Any) -> None:
        if self._built:
            raise LegacyPickleError("refused a second BUILD on a numpy dtype")
        self._built = True
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3):
            raise LegacyPickleError("numpy dtype state is not (3, byteorder, None, None, None, elsize, align, flags)")
        _, byteorder, subarray, names, fields, *ints = state
        if subarray is not None or names is not None or fields is not None:
            raise LegacyPickleError("refused a structured or subarray numpy dtype: legacy arrays hold plain numbers")
        if byteorder not in ("<", ">", "=", "|") or not all(type(i) is int for i in ints):
            raise LegacyPickleError("numpy dtype state has the wrong types")
        self.byteorder = byteorder  # elsize, alignment and flags are never used: numpy computes its own

    def resolve(self) -> np.dtype:
        """A fresh numpy dtype made from the admitted name and the byte order, nothing else."""
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class _Array(_Token):
    """An ndarray's recipe: dtype token, shape, order and raw bytes, as ``_reconstruct`` + BUILD or ``_frombuffer`` give."""

    __slots__ = ("_pending", "data", "dtype", "fortran", "native", "shape")
    what = "numpy array"

    def __init__(self, *, pending: bool, native: bool) -> None:
        self._pending, self.native = pending, native
        self.dtype = self.shape = self.fortran = self.data = None

    def set_recipe(self, dtype: Any, shape: Any, fortran: Any, data: Any) -> None:
        if not isinstance(dtype, _Dtype):
            raise LegacyPickleError("a numpy array's dtype must be a numpy.dtype")
        if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM and all(type(d) is int for d in shape)):
            raise LegacyPickleError(f"a numpy array's shape must be a tuple of at most {MAX_NDIM} ints")
        if type(fortran) is not bool:
            raise LegacyPickleError("a numpy array's order flag must be a bool")
        if type(data) not in (bytes, bytearray):
            raise LegacyPickleError("a numpy array's data must be bytes (object arrays are not plain data)")
        self.dtype, self.shape, self.fortran, self.data, self._pending = dtype, shape, fortran, data, False

    def __setstate__(self, state: Any) -> None:
        if not self._pending:
            raise LegacyPickleError("refused BUILD on a numpy array that already has its data")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise LegacyPickleError("numpy array state is not (1, shape, dtype, is_fortran, data)")
        _, shape, dtype, fortran, data = state
        self.set_recipe(dtype, shape, fortran, data)

    def rebuild(self, budget: _Budget) -> np.ndarray:
        if self._pending:
            raise LegacyPickleError("refused a numpy array without its state")
        dtype = self.dtype.resolve()
        if any(d < 0 for d in self.shape) or math.prod(max(d, 1) for d in self.shape) > MAX_LEGACY_BYTES:
            raise LegacyPickleError(f"refused numpy array shape {_brief(self.shape, 80)}: a dimension is out of range")
        count = math.prod(self.shape)
        nbytes = count * dtype.itemsize  # Python ints: no overflow, nothing allocated yet
        if nbytes != len(self.data):
            raise LegacyPickleError(
                f"numpy array of shape {_brief(self.shape, 80)} and dtype {dtype} does not match its "
                f"{len(self.data)} bytes"
            )
        budget.spend_bytes(nbytes, f"numpy array of shape {_brief(self.shape, 80)}")
        flat = np.frombuffer(self.data, dtype=dtype, count=count)  # a view of the validated bytes
        if dtype.kind == "b" and count and flat.view(np.uint8).max() > 1:
            raise LegacyPickleError("numpy bool array holds bytes other than 0 and 1")
        # numpy's own unpickling of a _reconstruct state gives native byte order, its _frombuffer keeps the order
        order = "F" if self.fortran else "C"
        array = np.empty(self.shape, dtype.newbyteorder("=") if self.native else dtype, order=order)
        np.copyto(array, flat.reshape(self.shape, order=order))  # the one allocation: a fresh array of its own
        return array


class _Scalar(_Token):
    """A numpy scalar's recipe, as ``numpy._core.multiarray.scalar(dtype, raw bytes)`` gives."""

    __slots__ = ("data", "dtype")
    what = "numpy scalar"

    def __init__(self, dtype: Any, data: Any) -> None:
        if not isinstance(dtype, _Dtype) or type(data) is not bytes:
            raise LegacyPickleError("numpy scalar is allowed only as scalar(numpy.dtype, bytes)")
        self.dtype, self.data = dtype, data

    def rebuild(self, budget: _Budget) -> np.generic:
        dtype = self.dtype.resolve()
        if len(self.data) != dtype.itemsize:
            raise LegacyPickleError(f"numpy {dtype} scalar does not match its {len(self.data)} bytes")
        if dtype.kind == "b" and self.data not in (b"\x00", b"\x01"):
            raise LegacyPickleError("numpy bool scalar is neither 0 nor 1")
        budget.spend_bytes(dtype.itemsize, "numpy scalar")
        return np.frombuffer(self.data, dtype=dtype)[0]  # indexing copies the value into a new scalar


class _Image(_Token):
    """``PIL.Image.Image`` as the unpickler sees it: NEWOBJ makes one, BUILD records ``[info, mode, size, palette, data]``."""

    __slots__ = ("_built", "data", "mode", "palette", "size")
    what = "PIL image"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ calls it with the pickled args
        if args or kwargs:
            raise LegacyPickleError("PIL.Image.Image takes no arguments in a legacy pickle")
        token = super().__new__(cls)
        token.mode = token.size = token.palette = token.data = None
        token._built = False
        return token

    def __setstate__(self, state: Any) -> None:
        if self._built:
            raise LegacyPickleError("refused BUILD on a PIL image that already has its data")
        self._built = True
        if not isinstance(state, (list, tuple)) or len(state) != 5:
            raise LegacyPickleError("PIL image state is not [info, mode, size, palette, data]")
        info, mode, size, palette, data = state
        if not (type(info) is dict and type(mode) is str and type(data) is bytes):
            raise LegacyPickleError("PIL image state has the wrong types")
        if mode not in IMAGE_MODES:
            raise LegacyPickleError(
                f"refused PIL image mode {_brief(mode, 20)}: legacy images may have the modes {', '.join(IMAGE_MODES)}"
            )
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(type(s) is int and s >= 0 for s in size)):
            raise LegacyPickleError("PIL image size is not (width, height) of ints")
        if palette is not None and not (
            type(palette) is list
            and len(palette) <= 768
            and len(palette) % 3 == 0
            and all(type(v) is int and 0 <= v <= 255 for v in palette)
        ):
            raise LegacyPickleError("PIL image palette is not up to 256 RGB triples of ints 0..255")
        # info (text chunks, ICC profiles, transparency) is dropped: nothing here reads it
        self.mode, self.size, self.palette, self.data = mode, (size[0], size[1]), palette, data

    def rebuild(self, budget: _Budget) -> Any:
        if not self._built:
            raise LegacyPickleError("refused a PIL image without its state")
        w, h = self.size
        bands = IMAGE_MODES[self.mode]
        expected = (w + 7) // 8 * h if self.mode == "1" else w * h * bands
        if len(self.data) != expected:
            raise LegacyPickleError(f"PIL image size {self.size} does not match its {len(self.data)} bytes")
        if not (0 < w <= MAX_FRAME_SIDE and 0 < h <= MAX_FRAME_SIDE):
            raise LegacyPickleError(f"refused PIL image of {w}x{h}: each side must be 1..{MAX_FRAME_SIDE} pixels")
        budget.spend_bytes(w * h * 3, f"PIL image of {w}x{h} (as an RGB frame)")  # before PIL allocates anything
        Image = _pil_image()
        image = Image.frombytes(self.mode, (w, h), self.data)
        if self.palette and self.mode in ("L", "LA", "P"):  # what PIL's own unpickling does with a palette
            image.putpalette(self.palette)
        return image


def _pil_image() -> Any:
    """The ``PIL.Image`` module, or None when Pillow is not installed (then PIL globals are refused)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


_NDARRAY = _Global("numpy.ndarray", None)  # _reconstruct's first argument; a marker, never called


def _resolvers(budget: _Budget) -> dict[str, Callable[[], Any]]:
    """Allowed global name -> factory for what the unpickler gets: tokens and guarded functions, per load."""

    def encode(text: Any, encoding: Any) -> bytes:  # protocol 2 writes bytes as _codecs.encode(s, "latin1")
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise LegacyPickleError("_codecs.encode is allowed only as encode(str, 'latin1')")
        budget.spend_encoded(len(text))
        return text.encode("latin1")

    def empty_bytes() -> bytes:  # protocol 2 writes b"" as bytes()
        return b""

    def make_set(kind: type) -> Callable[..., Any]:
        def build(items: Any = ()) -> Any:  # protocol 2 writes sets as set([items])
            if type(items) not in (list, tuple):
                raise LegacyPickleError(f"{kind.__name__} is allowed only as {kind.__name__}(list)")
            budget.spend_items(len(items), kind.__name__)
            return kind(items)

        return build

    def make_complex(real: Any = 0.0, imag: Any = 0.0) -> complex:  # protocol 2 writes complex(real, imag)
        if type(real) is not float or type(imag) is not float:
            raise LegacyPickleError("complex is allowed only as complex(float, float)")
        return complex(real, imag)

    def reconstruct(subtype: Any, shape: Any, typecode: Any) -> _Array:
        if subtype is not _NDARRAY or shape != (0,) or typecode != b"b":
            raise LegacyPickleError(
                f"_reconstruct with shape {_brief(shape, 40)} refused: allowed only as "
                "numpy writes it, _reconstruct(numpy.ndarray, (0,), b'b')"
            )
        return _Array(pending=True, native=True)

    def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _Array:
        if order not in ("C", "F"):
            raise LegacyPickleError("_frombuffer's order must be 'C' or 'F'")
        token = _Array(pending=False, native=False)
        token.set_recipe(dtype, shape, order == "F", buf)
        return token

    table: dict[str, Callable[[], Any]] = {
        "builtins.set": lambda: _Global("builtins.set", make_set(set)),
        "builtins.frozenset": lambda: _Global("builtins.frozenset", make_set(frozenset)),
        "builtins.complex": lambda: _Global("builtins.complex", make_complex),
        "builtins.bytes": lambda: _Global("builtins.bytes", empty_bytes),
        "_codecs.encode": lambda: _Global("_codecs.encode", encode),
        "numpy.dtype": lambda: _Global("numpy.dtype", _Dtype),
        "numpy.ndarray": lambda: _NDARRAY,
        "PIL.Image.Image": lambda: _Image if _pil_image() is not None else None,
    }
    for prefix in _NP_PREFIXES:
        table[prefix + "multiarray._reconstruct"] = lambda: _Global("_reconstruct", reconstruct)
        table[prefix + "multiarray.scalar"] = lambda: _Global("scalar", _Scalar)
        table[prefix + "numeric._frombuffer"] = lambda: _Global("_frombuffer", frombuffer)
    return table


ALLOWED_GLOBALS: frozenset[str] = frozenset(_resolvers(_Budget(0)))
"""Every global a legacy pickle may name (``__builtin__.x`` from protocol 2 counts as ``builtins.x``)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file)
        self._allowed = _resolvers(budget)

    def find_class(self, module: str, name: str) -> Any:
        # protocols 0-2 spell names the Python 2 way (__builtin__.set, commands.Popen); name them as 3.x does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        factory = self._allowed.get(qualified)
        found = factory() if factory is not None else None
        if found is None:
            raise LegacyPickleError(
                f"refused global {_brief(qualified, _MAX_NAME)}: legacy pickles may only hold plain data, "
                "numpy arrays and PIL images"
            )
        return found


# --------------------------------------------------------------------------- 3. rebuild


class _Rebuilder:
    """Walks an unpickled result and returns it rebuilt: fresh containers, every token made real."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.done: dict[int, Any] = {}  # id -> rebuilt, so shared references stay shared and cost once
        self.open: set[int] = set()  # containers being rebuilt: meeting one again is a cycle

    def rebuild(self, obj: Any, depth: int = 0) -> Any:
        kind = type(obj)
        if obj is None or kind is bool or kind is float or kind is complex:
            return obj
        if kind is int:
            if obj.bit_length() > MAX_INT_BITS:
                raise LegacyPickleError(f"refused an int of {obj.bit_length()} bits (at most {MAX_INT_BITS})")
            return obj
        if kind in (str, bytes, bytearray):
            if len(obj) > MAX_TEXT:
                raise LegacyPickleError(f"refused a {kind.__name__} of {len(obj)} (at most {MAX_TEXT})")
            return bytearray(obj) if kind is bytearray else obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if kind in (_Array, _Scalar, _Image):
            result = obj.rebuild(self.budget)
        elif kind in (list, tuple, dict, set, frozenset):
            result = self._container(obj, depth)
        else:
            what = obj.what if isinstance(obj, _Token) else kind.__name__
            raise LegacyPickleError(f"refused a bare {what} in a legacy message: only plain data is admitted")
        self.done[key] = result
        return result

    def _container(self, obj: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise LegacyPickleError(f"refused a legacy message nested over {MAX_DEPTH} deep")
        key = id(obj)
        if key in self.open:
            raise LegacyPickleError("refused a legacy message that contains itself")
        self.open.add(key)
        try:
            if type(obj) is dict:
                items = [(self.rebuild(k, depth + 1), self.rebuild(v, depth + 1)) for k, v in obj.items()]
                return dict(items)
            items = [self.rebuild(item, depth + 1) for item in obj]
            return type(obj)(items)
        except TypeError as exc:  # an array or an image as a dict key or a set item
            raise LegacyPickleError(f"refused an unhashable key or set item in a legacy message: {exc}") from None
        finally:
            self.open.discard(key)


def safe_loads(payload: bytes, *, max_bytes: int = MAX_LEGACY_BYTES) -> Any:
    """Unpickle ``payload`` as plain data; raise :class:`LegacyPickleError` for anything else.

    Refused: payloads over ``max_bytes``, opcodes and globals that plain data does not need, more
    than :data:`MAX_OPCODES` opcodes, arrays with a dtype outside :data:`ARRAY_DTYPES`, images with
    a mode outside :data:`IMAGE_MODES` or a side over ``MAX_FRAME_SIDE``, arrays, scalars and images
    over ``max_bytes`` together, nesting over :data:`MAX_DEPTH`, and anything that fails to unpickle
    (truncated or garbage data). Arrays, scalars and images in the result are fresh objects.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LegacyPickleError(f"expected bytes, got {type(payload).__name__}")
    size = memoryview(payload).nbytes
    if size > max_bytes:
        raise LegacyPickleError(f"legacy pickle of {size} bytes is over the {max_bytes}-byte limit")
    payload = bytes(payload)
    _scan(payload)
    budget = _Budget(max_bytes)
    try:
        result = _RestrictedUnpickler(io.BytesIO(payload), budget).load()
    except LegacyPickleError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError, MemoryError, ...
        raise LegacyPickleError(f"not a valid legacy pickle: {type(exc).__name__}: {_brief(str(exc), 120)}") from exc
    try:
        return _Rebuilder(budget).rebuild(result)
    except LegacyPickleError:
        raise
    except Exception as exc:  # MemoryError, or numpy or PIL refusing what passed the checks
        raise LegacyPickleError(f"legacy message could not be rebuilt: {type(exc).__name__}") from exc


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


def parse_legacy_request(payload: bytes, *, max_bytes: int = MAX_LEGACY_BYTES) -> dict[str, Any]:
    """Decode a legacy request to ``{"type": "predict", "frame": ndarray}`` or ``{"type": "reset" | "info"}``.

    ``max_bytes`` caps the payload and the bytes it may rebuild, as in :func:`safe_loads`.
    """
    request = safe_loads(payload, max_bytes=max_bytes)
    if not isinstance(request, dict):
        raise LegacyPickleError(f"expected a dict request, got {type(request).__name__}")
    kind = request.get("type")
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        raise LegacyPickleError(f"expected 'type' to be one of {sorted(REQUEST_TYPES)}, got {_brief(kind, 40)}")
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
