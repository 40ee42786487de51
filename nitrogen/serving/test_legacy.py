"""Tests for the opt-in legacy (pickled) protocol: round trips, and refusal of anything but plain data."""

from __future__ import annotations

import builtins
import gc
import hashlib
import json
import math
import os
import pickle
import pickletools
import re
import select
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import nitrogen
from nitrogen.serving.legacy import (
    ALLOWED_GLOBALS,
    ARRAY_DTYPES,
    IMAGE_MODES,
    MAX_DEPTH,
    LegacyPickleError,
    encode_legacy_reply,
    frame_from_legacy,
    legacy_reply,
    looks_like_pickle,
    parse_legacy_request,
    safe_loads,
)

PROTOCOLS = (2, 3, 4, 5)


def _frame(h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_with_ndarray_round_trips(protocol: int) -> None:
    frame = _frame()
    parsed = parse_legacy_request(pickle.dumps({"type": "predict", "image": frame}, protocol=protocol))
    assert parsed.keys() == {"type", "frame"} and parsed["type"] == "predict"
    assert parsed["frame"].dtype == np.uint8 and parsed["frame"].shape == (6, 5, 3)
    np.testing.assert_array_equal(parsed["frame"], frame)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_predict_with_pil_image_round_trips(protocol: int, mode: str) -> None:
    image = Image.fromarray(_frame()).convert(mode)
    parsed = parse_legacy_request(pickle.dumps({"type": "predict", "image": image}, protocol=protocol))
    np.testing.assert_array_equal(parsed["frame"], np.asarray(image.convert("RGB")))
    assert parsed["frame"].shape == (6, 5, 3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_loaded_pil_image_is_a_plain_image(protocol: int) -> None:
    image = Image.fromarray(_frame())
    loaded = safe_loads(pickle.dumps(image, protocol=protocol))
    assert type(loaded) is Image.Image
    assert loaded.size == (5, 6) and loaded.mode == "RGB"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["reset", "info"])
def test_reset_and_info_parse(protocol: int, kind: str) -> None:
    assert parse_legacy_request(pickle.dumps({"type": kind}, protocol=protocol)) == {"type": kind}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plain_data_numpy_and_scalars_load(protocol: int) -> None:
    value = {
        "ints": [1, -2, 10**30],
        "text": ("a", b"bytes", b""),
        "float": 1.5,
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "complex": 1 + 2j,
        "none": None,
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">f8"),
        "empty": np.zeros((0, 3), np.uint8),
        "scalar": np.float32(2.5),
        "np_int": np.int64(7),
    }
    payload = pickle.dumps(value, protocol=protocol)
    loaded, reference = safe_loads(payload), pickle.loads(payload)
    assert loaded.keys() == value.keys()
    for key in ("ints", "text", "float", "set", "frozen", "complex", "none", "scalar", "np_int"):
        assert loaded[key] == value[key], key
    for key in ("f32", "fortran", "big_endian", "empty"):
        np.testing.assert_array_equal(loaded[key], value[key])
        assert loaded[key].dtype == reference[key].dtype  # numpy itself drops ">" before protocol 5
    assert type(loaded["scalar"]) is np.float32


def _as_numpy1_pickle(payload: bytes) -> bytes:
    """Rename numpy 2.x's ``numpy._core`` globals to numpy 1.x's ``numpy.core`` in a small pickle."""
    if payload[2] == 0x95:  # drop the (single) FRAME of protocol 4/5, whose length would change
        payload = payload[:2] + payload[11:]
    for old in (b"numpy._core.multiarray", b"numpy._core.numeric"):
        new = old.replace(b"._core.", b".core.")
        payload = payload.replace(bytes([0x8C, len(old)]) + old, bytes([0x8C, len(new)]) + new)  # SHORT_BINUNICODE
        payload = payload.replace(b"c" + old + b"\n", b"c" + new + b"\n")  # GLOBAL
    assert b"numpy._core" not in payload
    return payload


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pickles_from_numpy_1_load(protocol: int) -> None:
    value = {"type": "predict", "image": _frame(), "scalar": np.float32(0.25)}
    loaded = safe_loads(_as_numpy1_pickle(pickle.dumps(value, protocol=protocol)))
    np.testing.assert_array_equal(loaded["image"], value["image"])
    assert loaded["scalar"] == np.float32(0.25)


# --------------------------------------------------------------------------- malicious pickles


class _SystemTouch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


class _EvalTouch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _PopenTouch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("payload_class", "global_name"),
    [
        (_SystemTouch, f"{os.system.__module__}.system"),
        (_EvalTouch, "builtins.eval"),
        (_PopenTouch, "subprocess.Popen"),
    ],
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, protocol, payload_class, global_name) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"type": "predict", "image": payload_class(marker)}, protocol=protocol)
    for load in (safe_loads, parse_legacy_request):
        with pytest.raises(LegacyPickleError, match=f"refused global '{global_name}'"):
            load(payload)
    assert not marker.exists()


def test_globals_reached_indirectly_are_refused() -> None:
    # getattr(builtins, "eval") and __import__("os") are the usual ways round a deny-list
    for name in ("getattr", "__import__", "exec", "open"):
        payload = b"\x80\x04c__builtin__\n" + name.encode() + b"\n."
        with pytest.raises(LegacyPickleError, match=f"refused global 'builtins.{name}'"):
            safe_loads(payload)
    with pytest.raises(LegacyPickleError, match="refused global 'copyreg._reconstructor'"):
        safe_loads(b"\x80\x02ccopyreg\n_reconstructor\n.")


def test_allow_list_is_exactly_plain_data_numpy_and_pil() -> None:
    numpy_names = {
        f"{prefix}.{name}"
        for prefix in ("numpy._core", "numpy.core")
        for name in ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")
    }
    assert ALLOWED_GLOBALS == {
        "builtins.set",
        "builtins.frozenset",
        "builtins.complex",
        "builtins.bytes",
        "_codecs.encode",
        "numpy.dtype",
        "numpy.ndarray",
        "PIL.Image.Image",
        *numpy_names,
    }


def test_allowed_callables_refuse_misuse() -> None:
    # _codecs.encode other than (str, "latin1"), bytes(n), ndarray(shape) and a huge _reconstruct
    with pytest.raises(LegacyPickleError, match="_codecs.encode"):
        safe_loads(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(LegacyPickleError):
        safe_loads(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")
    with pytest.raises(LegacyPickleError):
        safe_loads(b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85\x85R.")
    huge = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85C\x01b\x87R."
    with pytest.raises(LegacyPickleError, match="_reconstruct with shape"):
        safe_loads(huge, max_bytes=1024)


def test_build_on_an_allowed_class_cannot_patch_it() -> None:
    convert = Image.Image.convert
    for payload in (
        b"\x80\x04cPIL.Image\nImage\nN}\x8c\x07convertNs\x86b.",  # BUILD (None, {"convert": None})
        b"\x80\x04cPIL.Image\nImage\n}\x8c\x07convertNsb.",  # BUILD {"convert": None}
        b"\x80\x04c__builtin__\nset\nN}\x8c\x03addNs\x86b.",
    ):
        with pytest.raises(LegacyPickleError):
            safe_loads(payload)
    assert Image.Image.convert is convert and set.add is not None


def test_pil_image_with_a_size_its_data_cannot_fill_is_refused() -> None:
    state = [{}, "RGB", (100_000, 100_000), None, b"\x00" * 12]
    payload = b"\x80\x04cPIL.Image\nImage\n)\x81" + pickle.dumps(state, protocol=4)[2:-1] + b"b."
    with pytest.raises(LegacyPickleError, match="does not match"):
        safe_loads(payload)


# --------------------------------------------------------------------------- other refusals


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_object_dtype_array_is_refused(protocol: int) -> None:
    nested = {"type": "predict", "image": [(1, np.array([1, "x"], dtype=object))]}
    with pytest.raises(LegacyPickleError, match="object"):
        safe_loads(pickle.dumps(nested, protocol=protocol))


def test_truncated_and_garbage_pickles_are_refused() -> None:
    whole = pickle.dumps({"type": "predict", "image": _frame()}, protocol=4)
    for bad in (whole[: len(whole) // 2], whole[:-1], b"\x80\x04garbage that is not a pickle", os.urandom(64), b""):
        with pytest.raises(LegacyPickleError, match="not a valid legacy pickle"):
            safe_loads(bad)


def test_oversized_payload_is_refused() -> None:
    payload = pickle.dumps({"type": "predict", "image": _frame(64, 64)}, protocol=4)
    with pytest.raises(LegacyPickleError, match="over the 1000-byte limit"):
        safe_loads(payload, max_bytes=1000)
    assert safe_loads(payload, max_bytes=len(payload))["type"] == "predict"
    with pytest.raises(LegacyPickleError, match="over the 1000-byte limit"):
        parse_legacy_request(payload, max_bytes=1000)
    assert parse_legacy_request(payload, max_bytes=len(payload))["frame"].shape == (64, 64, 3)


@pytest.mark.parametrize(
    "request_", [{"type": "shutdown"}, {"type": None}, {"type": ["predict"]}, {}, ["predict"], "info"]
)
def test_wrong_type_is_refused(request_) -> None:
    with pytest.raises(LegacyPickleError, match="expected"):
        parse_legacy_request(pickle.dumps(request_, protocol=4))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        "pixels",
        None,
        [1, 2],
    ],
)
def test_predict_with_wrong_image_says_what_was_expected(image) -> None:
    with pytest.raises(LegacyPickleError, match=r"expected 'image' as a uint8 \(H, W, 3\) array or a PIL image"):
        parse_legacy_request(pickle.dumps({"type": "predict", "image": image}, protocol=4))


def test_predict_without_image_says_what_was_expected() -> None:
    with pytest.raises(LegacyPickleError, match=r"no 'image': expected a uint8 \(H, W, 3\) array or a PIL image"):
        parse_legacy_request(pickle.dumps({"type": "predict"}, protocol=4))


def test_frame_from_legacy_passes_arrays_through_and_converts_images() -> None:
    frame = _frame()
    assert frame_from_legacy(frame) is frame
    gray = Image.fromarray(frame[..., 0])
    np.testing.assert_array_equal(frame_from_legacy(gray), np.repeat(frame[..., :1], 3, axis=2))


# --------------------------------------------------------------------------- sniffing and replies


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_looks_like_pickle_for_real_pickles(protocol: int) -> None:
    assert looks_like_pickle(pickle.dumps({"type": "info"}, protocol=protocol))
    assert looks_like_pickle(pickle.dumps(None, protocol=protocol))


@pytest.mark.parametrize(
    "payload", [b"\x80", b"", b"\x81\xa1a\x01", b"\x80\x01x", b"\x80\x06x", b"\x82\xa1a\x01\xa1b\x02"]
)
def test_looks_like_pickle_is_false_for_msgpack_and_short_input(payload: bytes) -> None:
    assert not looks_like_pickle(payload)


def test_legacy_reply_pred_unpickles_to_the_original_structure() -> None:
    pred = {
        "j_left": np.zeros((18, 2), np.float32),
        "j_right": np.ones((18, 2), np.float32),
        "buttons": np.eye(18, 21, dtype=np.float32),
        "action_tensor": np.zeros((18, 25), np.float32),
    }
    reply = pickle.loads(legacy_reply(pred=pred))
    assert reply.keys() == {"status", "pred"} and reply["status"] == "ok"
    assert reply["pred"].keys() == {"j_left", "j_right", "buttons"}
    for key in ("j_left", "j_right", "buttons"):
        assert isinstance(reply["pred"][key], np.ndarray)
        np.testing.assert_array_equal(reply["pred"][key], pred[key])
    assert safe_loads(legacy_reply(pred=pred))["pred"]["buttons"].shape == (18, 21)


def test_legacy_reply_info_error_and_bare_ok() -> None:
    info = {"model": "nitrogen", "horizon": 18}
    assert pickle.loads(legacy_reply(info=info)) == {"status": "ok", "info": info}
    assert pickle.loads(legacy_reply("error", message="bad frame")) == {"status": "error", "message": "bad frame"}
    assert pickle.loads(legacy_reply()) == {"status": "ok"}
    assert looks_like_pickle(legacy_reply())


def test_legacy_reply_refuses_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="message"):
        legacy_reply("error")
    with pytest.raises(ValueError, match="pred lacks"):
        legacy_reply(pred={"j_left": np.zeros(2)})
    with pytest.raises(ValueError, match="status"):
        legacy_reply("maybe")


def test_encode_legacy_reply_derives_sticks_and_buttons_from_the_action_tensor() -> None:
    from nitrogen.actions import unpack_actions

    tensor = np.random.default_rng(0).random((18, 25), dtype=np.float32)
    reply = pickle.loads(encode_legacy_reply({"v": 1, "status": "ok", "id": None, "pred": {"action_tensor": tensor}}))
    assert reply["status"] == "ok" and set(reply["pred"]) == {"j_left", "j_right", "buttons"}
    for got, want in zip((reply["pred"][k] for k in ("j_left", "j_right", "buttons")), unpack_actions(tensor)):
        np.testing.assert_array_equal(got, want)
    error = {"v": 1, "status": "error", "id": None, "error": "frame is empty"}
    assert pickle.loads(encode_legacy_reply(error)) == {"status": "error", "message": "frame is empty"}
    info = {"v": 1, "status": "ok", "id": None, "info": {"name": "ng"}, "server_ms": 0.1}
    assert pickle.loads(encode_legacy_reply(info)) == {"status": "ok", "info": {"name": "ng"}}
    assert pickle.loads(encode_legacy_reply({"v": 1, "status": "ok", "id": None})) == {"status": "ok", "info": {}}


# --------------------------------------------------------------------------- a small pickle assembler
# Hostile pickles are written opcode by opcode: ops(value) is the opcode stream that pushes value,
# where a Raw inside value is spliced in as it is.


class Raw(bytes):
    """Opcodes to splice into a pickle as they are."""


def ops(value: Any) -> bytes:
    if isinstance(value, Raw):
        return bytes(value)
    if value is None:
        return pickle.NONE
    if value is True or value is False:
        return pickle.NEWTRUE if value else pickle.NEWFALSE
    if isinstance(value, int):
        if 0 <= value < 256:
            return pickle.BININT1 + bytes([value])
        if -(2**31) <= value < 2**31:
            return pickle.BININT + struct.pack("<i", value)
        data = pickle.encode_long(value)
        return (
            pickle.LONG1 + bytes([len(data)]) + data
            if len(data) < 256
            else pickle.LONG4 + struct.pack("<i", len(data)) + data
        )
    if isinstance(value, float):
        return pickle.BINFLOAT + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return (
            pickle.SHORT_BINUNICODE + bytes([len(data)]) + data
            if len(data) < 256
            else pickle.BINUNICODE + struct.pack("<I", len(data)) + data
        )
    if isinstance(value, bytearray):
        return pickle.BYTEARRAY8 + struct.pack("<Q", len(value)) + bytes(value)
    if isinstance(value, bytes):
        return (
            pickle.SHORT_BINBYTES + bytes([len(value)]) + value
            if len(value) < 256
            else pickle.BINBYTES + struct.pack("<I", len(value)) + value
        )
    if isinstance(value, tuple):
        if not value:
            return pickle.EMPTY_TUPLE
        body = b"".join(ops(v) for v in value)
        return (
            body + (pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(value) - 1]
            if len(value) <= 3
            else pickle.MARK + body + pickle.TUPLE
        )
    if isinstance(value, list):
        return pickle.EMPTY_LIST + (pickle.MARK + b"".join(ops(v) for v in value) + pickle.APPENDS if value else b"")
    if isinstance(value, dict):
        body = b"".join(ops(k) + ops(v) for k, v in value.items())
        return pickle.EMPTY_DICT + (pickle.MARK + body + pickle.SETITEMS if value else b"")
    raise TypeError(f"ops() cannot write a {type(value).__name__}")


def dumps(value: Any, protocol: int = 4) -> bytes:
    return pickle.PROTO + bytes([protocol]) + ops(value) + pickle.STOP


def glob(qualified: str) -> Raw:
    module, name = qualified.rsplit(".", 1)
    return Raw(ops(module) + ops(name) + pickle.STACK_GLOBAL)


def call(fn: Any, *args: Any) -> Raw:
    return Raw(ops(fn) + ops(tuple(args)) + pickle.REDUCE)


def build(obj: Any, state: Any) -> Raw:
    return Raw(ops(obj) + ops(state) + pickle.BUILD)


def newobj(cls: Any, *args: Any) -> Raw:
    return Raw(ops(cls) + ops(tuple(args)) + pickle.NEWOBJ)


PLAIN_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)


def np_dtype(name: Any, state: Any = PLAIN_DTYPE_STATE) -> Raw:
    made = call(glob("numpy.dtype"), name, False, True)
    return made if state is None else build(made, state)


def np_frombuffer(data: Any, dtype: Any, shape: Any, order: Any = "C") -> Raw:
    return call(glob("numpy._core.numeric._frombuffer"), data, dtype, shape, order)


def np_reconstruct(state: Any, shape: Any = (0,), typecode: Any = b"b") -> Raw:
    made = call(glob("numpy._core.multiarray._reconstruct"), glob("numpy.ndarray"), shape, typecode)
    return made if state is None else build(made, state)


def np_scalar(dtype: Any, data: Any) -> Raw:
    return call(glob("numpy._core.multiarray.scalar"), dtype, data)


def pil_image(state: Any) -> Raw:
    return build(newobj(glob("PIL.Image.Image")), state)


def test_the_assembler_writes_what_pickle_reads() -> None:
    value = {"a": [1, -5, 2**40, 1.5, None, True], "b": (b"x" * 300, "é"), "c": (1, 2, 3, 4), "d": bytearray(b"z")}
    assert pickle.loads(dumps(value)) == value
    frame = _frame()
    rgb = dumps(np_frombuffer(frame.tobytes(), np_dtype("u1"), frame.shape))
    np.testing.assert_array_equal(safe_loads(rgb), frame)
    state = (1, frame.shape, np_dtype("u1"), False, frame.tobytes())
    np.testing.assert_array_equal(safe_loads(dumps(np_reconstruct(state))), frame)
    assert safe_loads(dumps(np_scalar(np_dtype("f4", (3, "<", None, None, None, -1, -1, 0)), b"\x00\x00 @"))) == 2.5
    image = safe_loads(dumps(pil_image([{}, "RGB", (5, 6), None, frame.tobytes()])))
    np.testing.assert_array_equal(np.asarray(image), frame)


# --------------------------------------------------------------------------- memory, measured


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Peak:
    traced_mb: float = 0.0  # tracemalloc's peak: Python and numpy allocations, touched or not
    rss_mb: float = 0.0  # growth of VmHWM: everything touched, PIL's buffers included


@contextmanager
def _peak_memory() -> Iterator[_Peak]:
    peak = _Peak()
    gc.collect()
    base_kb = _status_kb("VmRSS") if _reset_peak_rss() else _status_kb("VmHWM")
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        peak.rss_mb = max(0, _status_kb("VmHWM") - base_kb) / 1024


# --------------------------------------------------------------------------- a worker process for hostile pickles
# Hostile pickles are loaded in a child process, so that a crash fails a test instead of killing
# pytest. The child loads each payload with safe_loads and parse_legacy_request, checks that what
# came out is plain data, touches every byte of it, and reports, with the peak memory of each load.

_REPO_ROOT = Path(__file__).resolve().parents[2]
_CODE_RAN = "pwned"  # the file that the code-running payloads below would create in the worker's folder


def _check_plain(value: Any, depth: int = 0) -> int:
    """Assert that ``value`` is plain data as safe_loads promises; read all of it; return its bytes."""
    assert depth <= MAX_DEPTH, "nested too deep"
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str):
        return 0
    if kind in (bytes, bytearray):
        return len(bytes(value))
    if kind in (list, tuple, set, frozenset):
        return sum(_check_plain(item, depth + 1) for item in value)
    if kind is dict:
        return sum(_check_plain(k, depth + 1) + _check_plain(v, depth + 1) for k, v in value.items())
    if kind is np.ndarray or isinstance(value, np.generic):
        dtype = value.dtype
        assert dtype.str[1:] in ARRAY_DTYPES and not dtype.hasobject and dtype.fields is None, dtype
        assert dtype.subdtype is None and (kind is not np.ndarray or value.flags.owndata), dtype
        return len(value.tobytes())
    if kind is Image.Image:
        assert value.mode in {"1", "L", "P", "LA", "PA", "RGB", "RGBA"} and value.width * value.height > 0
        return len(value.tobytes()) + np.asarray(value.convert("RGB")).nbytes
    raise AssertionError(f"safe_loads returned a {kind.__name__}")


def _load_in_worker(payload: bytes, trace: bool, unsafe_reference: bool) -> dict[str, Any]:
    if unsafe_reference:  # what the original server did: pickle.loads, then use what came out
        return {"pickle.loads": repr(pickle.loads(payload))[:200]}
    report: dict[str, Any] = {}
    for load in (safe_loads, parse_legacy_request):
        if trace:
            gc.collect()
        base_kb = _status_kb("VmRSS") if _reset_peak_rss() else _status_kb("VmHWM")
        if trace:
            tracemalloc.start()
        entry: dict[str, Any] = {}
        try:
            value = load(payload)
            if load is safe_loads:
                entry["bytes"] = _check_plain(value)
            elif value["type"] == "predict":
                frame = value["frame"]
                assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
                entry["frame"] = [list(frame.shape), hashlib.sha1(frame.tobytes()).hexdigest()]
            entry["outcome"] = "accepted"
        except LegacyPickleError as exc:
            entry["outcome"], entry["message"] = "refused", str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug, reported: anything but a parse or a LegacyPickleError
            entry["outcome"], entry["message"] = "error", f"{type(exc).__name__}: {exc}"[:500]
        finally:
            value = None
            if trace:
                entry["traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
            entry["peak_mb"] = max(0, _status_kb("VmHWM") - base_kb) / 1024
        report[load.__name__] = entry
    report["rss_mb"] = _status_kb("VmRSS") / 1024
    report["code_ran"] = Path(_CODE_RAN).exists()
    return report


def worker_main() -> None:
    """The child's loop: read ``[flags: u8][size: u32 LE][payload]`` from stdin, write one JSON line per payload.

    Flag 1 traces allocations with tracemalloc; flag 2 loads with the real ``pickle.loads`` instead, as
    the original server did (only for payloads that a test made itself).
    """
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else that prints goes to stderr, not into the channel
    requests = sys.stdin.buffer
    channel.write(json.dumps({"nitrogen": str(Path(nitrogen.__file__).parent)}).encode() + b"\n")
    channel.flush()
    while len(header := requests.read(5)) == 5:
        payload = requests.read(struct.unpack("<I", header[1:])[0])
        report = _load_in_worker(payload, trace=bool(header[0] & 1), unsafe_reference=bool(header[0] & 2))
        channel.write(json.dumps(report).encode() + b"\n")
        channel.flush()


class LegacyWorker:
    """A child process that loads legacy pickles; restarted after a crash, which it reports."""

    def __init__(self, folder: Path, timeout_s: float = 120.0) -> None:
        self.folder, self.timeout_s = folder, timeout_s
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        self._stderr = (self.folder / f"worker-{self.starts}.stderr").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from nitrogen.serving.test_legacy import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=self.folder,
            env=env,
        )
        self.starts += 1
        hello = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert hello["nitrogen"] == str(_REPO_ROOT / "nitrogen"), hello  # the code under test, not another copy
        self._proc = proc
        return proc

    def check(self, payload: bytes, *, trace: bool = False, unsafe_reference: bool = False) -> dict[str, Any]:
        """The worker's report on ``payload``; ``{"crash": returncode, "stderr": ...}`` if it died, ``{"hang": s}``."""
        proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            flags = int(trace) | 2 * int(unsafe_reference)
            proc.stdin.write(bytes([flags]) + struct.pack("<I", len(payload)) + payload)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: readline below sees the end
        if not select.select([proc.stdout], [], [], self.timeout_s)[0]:
            proc.kill()
            proc.wait()
            return {"hang": self.timeout_s}
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            self._stderr.close()
            return {"crash": code, "stderr": Path(self._stderr.name).read_text(errors="replace")[-2000:]}
        report = json.loads(line)
        report["code_ran"] = report.get("code_ran", False) or (self.folder / _CODE_RAN).exists()
        return report

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()  # type: ignore[union-attr]
            self._proc.wait()
        self._proc = None


def outcome(report: dict[str, Any]) -> str:
    """``accepted`` or ``refused`` (what safe_loads did), or what went wrong: ``crash``, ``hang``, ``error``, ``code ran``."""
    if "crash" in report or "hang" in report:
        return "crash" if "crash" in report else "hang"
    if report["code_ran"]:
        return "code ran"
    if "error" in (report["safe_loads"]["outcome"], report["parse_legacy_request"]["outcome"]):
        return "error"
    return report["safe_loads"]["outcome"]


@pytest.fixture(scope="module")
def legacy_worker(tmp_path_factory) -> Iterator[LegacyWorker]:
    worker = LegacyWorker(tmp_path_factory.mktemp("legacy-worker"))
    yield worker
    worker.close()


def _refused_within(worker: LegacyWorker, payload: bytes, budget_mb: float, match: str = "") -> str:
    """Assert that the worker refuses ``payload`` as a message and as a request, each peaking under ``budget_mb``."""
    report = worker.check(payload, trace=True)
    assert outcome(report) == "refused", report
    for load in ("safe_loads", "parse_legacy_request"):
        entry = report[load]
        assert entry["outcome"] == "refused", (load, entry)
        assert re.search(match, entry["message"]), (load, entry)
        assert len(entry["message"]) < 400, (load, entry)
        assert entry["traced_mb"] < budget_mb and entry["peak_mb"] < budget_mb, (load, entry)
    return report["safe_loads"]["message"]


def test_the_worker_survives_what_crashes_plain_pickle(tmp_path: Path) -> None:
    # the forged-flags dtype of finding 1, given to the real pickle.loads: the worker dies, pytest does not,
    # and the next payload gets a fresh worker
    worker = LegacyWorker(tmp_path)
    try:
        forged = dumps(np_frombuffer(b"A" * 8, np_dtype("O", (3, "|", None, None, None, -1, -1, 0)), (1,)))
        crashed = worker.check(forged, unsafe_reference=True)
        assert outcome(crashed) == "crash" and crashed["crash"] < 0, crashed
        assert outcome(worker.check(forged)) == "refused" and worker.starts == 2
        good = worker.check(pickle.dumps({"type": "predict", "image": _frame()}, protocol=4))
        assert outcome(good) == "accepted" and good["parse_legacy_request"]["frame"][0] == [6, 5, 3]
    finally:
        worker.close()


# --------------------------------------------------------------------------- hostile pickles (issue 18, finding 1)

SMALL_MB = 16  # what a refusal may cost, at most: the payload is already in memory


def test_dtype_with_forged_flags_is_refused_and_never_reaches_numpy(legacy_worker: LegacyWorker) -> None:
    # dtype("O") BUILT with flags=0 claims hasobject=False, so 8 attacker bytes became an object pointer
    for forged in (
        np_dtype("O", (3, "|", None, None, None, -1, -1, 0)),
        np_dtype("V8", (3, "|", None, ("a",), {"a": (np_dtype("O", None), 0)}, 8, 1, 0)),  # object field
    ):
        by_frombuffer = np_frombuffer(b"A" * 8, forged, (1,))
        by_reconstruct = np_reconstruct((1, (1,), forged, False, b"A" * 8))
        for image in (by_frombuffer, by_reconstruct, [by_frombuffer]):
            payload = dumps({"type": "predict", "image": image})
            assert len(payload) < 400
            _refused_within(legacy_worker, payload, SMALL_MB, match="dtype")


def test_dtype_state_is_never_handed_to_numpy(legacy_worker: LegacyWorker) -> None:
    # a plain name with a structured, subarray or unknown state, a second BUILD, and a bare dtype
    u1 = call(glob("numpy.dtype"), "u1", False, True)
    for dtype in (
        build(u1, (3, "|", (np_dtype("u1"), (4,)), None, None, 4, 1, 0)),
        build(u1, (3, "|", None, ("a",), {"a": (np_dtype("u1"), 0)}, 1, 1, 0)),
        build(u1, (4, "|", None, None, None, -1, -1, 0, {"meta": 1})),
        build(u1, (3, "!", None, None, None, -1, -1, 0)),
        build(build(u1, PLAIN_DTYPE_STATE), PLAIN_DTYPE_STATE),
    ):
        _refused_within(legacy_worker, dumps(np_frombuffer(b"\x00" * 4, dtype, (4,))), SMALL_MB, match="dtype")
    _refused_within(
        legacy_worker, dumps({"type": "predict", "dtype": np_dtype("u1")}), SMALL_MB, match="bare numpy dtype"
    )


def test_subarray_dtype_cannot_multiply_the_allocation(legacy_worker: LegacyWorker) -> None:
    # ('O', (64,)) pickles as V512 with a subarray state: 2 M elements of it were 1 GB (16 GB at the limit)
    subarray = np_dtype("V512", (3, "|", (np_dtype("O"), (64,)), None, None, 512, 8, 63))
    for payload in (
        dumps({"type": "predict", "image": np_reconstruct(None, shape=(2_000_000,), typecode=subarray)}),
        dumps({"type": "predict", "image": np_frombuffer(b"", subarray, (2_000_000,))}),
    ):
        assert len(payload) < 400
        _refused_within(legacy_worker, payload, SMALL_MB, match="dtype|_reconstruct")


@pytest.mark.parametrize(
    "where",
    [
        lambda o: np_scalar(o, b"\x00" * 8),
        lambda o: np_frombuffer(b"\x00" * 8, o, (1,)),
        lambda o: np_reconstruct((1, (1,), o, False, [None])),
        lambda o: {"info": o},
        lambda o: pil_image([{"icc": o}, "RGB", (1, 1), None, b"\x00" * 3]),
    ],
    ids=["scalar", "frombuffer", "reconstruct", "bare", "in_image_info"],
)
def test_an_object_dtype_anywhere_is_refused(legacy_worker: LegacyWorker, where) -> None:
    _refused_within(legacy_worker, dumps({"type": "predict", "image": where(np_dtype("O"))}), SMALL_MB, match="object")


def test_only_the_short_dtype_list_is_admitted() -> None:
    for name in sorted(ARRAY_DTYPES):
        dtype = np.dtype(name)
        array = np.arange(3).astype(dtype)
        assert safe_loads(pickle.dumps(array, protocol=5)).dtype == dtype
    for array in (np.zeros(2, "c16"), np.zeros(2, "U3"), np.zeros(2, "S3"), np.zeros(2, "M8[s]"), np.zeros(2, "V4")):
        with pytest.raises(LegacyPickleError, match="dtype"):
            safe_loads(pickle.dumps(array, protocol=4))
    with pytest.raises(LegacyPickleError, match="dtype"):
        safe_loads(pickle.dumps(np.zeros(2, [("x", "f4"), ("y", "f4")]), protocol=4))


def test_zero_width_image_of_huge_height_is_refused_before_pil_sees_it(legacy_worker: LegacyWorker) -> None:
    # PIL spent 10 s of the I/O thread making 2^31-1 empty rows
    for size in ((0, 2**31 - 1), (2**31 - 1, 0), (0, 0)):
        image = pil_image([{}, "RGB", size, None, b""])
        _refused_within(legacy_worker, dumps({"type": "predict", "image": image}), SMALL_MB, match="side")


def test_mode_1_image_bombs_are_refused_before_pil_allocates(legacy_worker: LegacyWorker) -> None:
    # 16000^2 mode "1" is 32 MB of pickle and was 3 GB decoded; 8192^2 fits the sides but not the pixel budget
    for side, match in ((16000, "side"), (8192, "budget")):
        payload = dumps({"type": "predict", "image": pil_image([{}, "1", (side, side), None, bytes(side // 8 * side)])})
        assert len(payload) <= 32 * 10**6 + 200
        _refused_within(legacy_worker, payload, len(payload) / 2**20 + SMALL_MB, match=match)


def test_image_modes_outside_the_list_are_refused_and_small_palette_images_load(legacy_worker: LegacyWorker) -> None:
    for mode in ("I;16", "F", "I", "CMYK", "YCbCr", "PA", "BGR;24", "X" * 300):
        image = pil_image([{}, mode, (2, 2), None, b"\x00" * 16])
        _refused_within(legacy_worker, dumps({"type": "predict", "image": image}), SMALL_MB, match="mode")
    gray = Image.fromarray(_frame()[..., 0])
    for mode, palette in (("P", list(range(30))), ("L", [0, 0, 0] * 256)):
        state = [{}, mode, gray.size, palette, gray.tobytes()]
        loaded = safe_loads(dumps(pil_image(state)))
        expected = Image.Image()
        expected.__setstate__(state)  # what PIL's own unpickling made of it
        np.testing.assert_array_equal(frame_from_legacy(loaded), np.asarray(expected.convert("RGB")))
    for palette in ([300, 0, 0], [0, 0], list(range(256)) * 4, "rgb"):
        with pytest.raises(LegacyPickleError, match="palette"):
            safe_loads(dumps(pil_image([{}, "P", (1, 1), palette, b"\x00"])))


def test_image_info_is_not_carried_over() -> None:
    image = Image.fromarray(_frame())
    image.info["transparency"] = (1, 2, 3)
    loaded = safe_loads(pickle.dumps(image, protocol=4))
    assert loaded.info == {} and loaded.size == image.size


def test_giant_shapes_with_tiny_buffers_are_refused_before_allocating(legacy_worker: LegacyWorker) -> None:
    f8 = np_dtype("f8", (3, "<", None, None, None, -1, -1, 0))
    for payload in (
        # _reconstruct allocated its shape before BUILD replaced it: 2^25 float64s were 256 MB
        dumps(np_reconstruct((1, (1,), f8, False, b"\x00" * 8), shape=(2**25,), typecode=f8)),
        dumps(np_frombuffer(b"\x00", np_dtype("u1"), (2**40, 2**40))),
        dumps(np_frombuffer(b"", np_dtype("u1"), (0, 2**62))),
        dumps(np_frombuffer(b"", np_dtype("u1"), (-1, 0))),
        dumps(np_frombuffer(b"\x00" * 9, np_dtype("u1"), (1,) * 9)),
        dumps(np_reconstruct((1, (2**31, 2**31), np_dtype("u1"), False, b"\x00"))),
        dumps(np_reconstruct((1, (4,), np_dtype("u1"), False, b"\x00"))),
        dumps(np_scalar(f8, b"\x00")),
    ):
        _refused_within(legacy_worker, payload, SMALL_MB)


def test_arrays_and_images_of_one_message_share_one_byte_budget() -> None:
    # one memoized MiB of bytes behind 40 arrays is 40 MiB rebuilt, over the 32 MiB budget
    data = Raw(ops(b"\x00" * 2**20) + pickle.BINPUT + b"\x00")
    u1 = Raw(np_dtype("u1") + pickle.BINPUT + b"\x01")
    again = Raw(pickle.BINGET + b"\x00")
    arrays = [np_frombuffer(data, u1, (2**20,))] + [
        np_frombuffer(again, Raw(pickle.BINGET + b"\x01"), (2**20,)) for _ in range(39)
    ]
    with _peak_memory() as peak, pytest.raises(LegacyPickleError, match="byte budget"):
        safe_loads(dumps(arrays))
    assert peak.traced_mb < 40 and peak.rss_mb < 40
    images = [pil_image([{}, "L", (1024, 1024), None, again])] * 12
    with pytest.raises(LegacyPickleError, match="byte budget"):  # each counts as its 3 MiB RGB frame
        safe_loads(dumps([Raw(data + pickle.POP)] + images))
    # the same array referenced 40 times is rebuilt once, shared, and costs once
    first = Raw(np_frombuffer(data, u1, (2**20,)) + pickle.BINPUT + b"\x02")
    shared = safe_loads(dumps([first] + [Raw(pickle.BINGET + b"\x02")] * 39))
    assert len(shared) == 40 and all(a is shared[0] for a in shared)


def test_memo_and_length_tricks_are_refused_before_the_unpickler_allocates(legacy_worker: LegacyWorker) -> None:
    for payload in (
        b"\x80\x04N" + pickle.LONG_BINPUT + struct.pack("<I", 2**28) + b".",  # the C memo grew to 2^29 slots: 4 GB
        b"\x80\x04" + pickle.LONG_BINGET + struct.pack("<I", 2**31) + b".",
        b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", 2**40) + b"xx.",  # preallocated before reading
        b"\x80\x05" + pickle.BYTEARRAY8 + struct.pack("<Q", 2**33) + b".",
        b"\x80\x04" + pickle.BINUNICODE8 + struct.pack("<Q", 2**62) + b".",
        b"\x80\x02" + pickle.BINSTRING + struct.pack("<i", -5) + b".",
        b"\x80\x04" + pickle.FRAME + struct.pack("<Q", 2**50) + b"N.",
        b"\x80\x04N.trailing",
        b"\x80\x04c" + b"m" * 10_000 + b"\nx\n.",
    ):
        _refused_within(legacy_worker, payload, SMALL_MB, match="not a valid legacy pickle|memo")


@pytest.mark.parametrize(
    "opcode",
    [
        pickle.INST,
        pickle.OBJ,
        pickle.PERSID,
        pickle.BINPERSID,
        pickle.EXT1,
        pickle.EXT2,
        pickle.EXT4,
        pickle.NEWOBJ_EX,
        pickle.LONG4,
        pickle.NEXT_BUFFER,
        pickle.READONLY_BUFFER,
        pickle.DUP,
        pickle.INT,
        pickle.LONG,
        pickle.FLOAT,
        pickle.STRING,
        pickle.UNICODE,
        pickle.GET,
        pickle.PUT,
        pickle.LIST,
        pickle.DICT,
    ],
    ids=lambda op: {
        code: name for name, code in vars(pickle).items() if isinstance(code, bytes) and name.isupper()
    }.get(op, "?"),
)
def test_opcodes_that_plain_data_does_not_need_are_refused(opcode: bytes) -> None:
    with pytest.raises(LegacyPickleError, match="refused opcode"):
        safe_loads(b"\x80\x04" + opcode + b"\x00\x00\x00\x00\n\n.")


def test_nesting_bombs_are_refused(legacy_worker: LegacyWorker) -> None:
    # 200,000 nested lists in 400 KB: repr of the refused 'type' raised RecursionError, not a clean refusal
    for depth in (MAX_DEPTH + 1, 5_000, 200_000):
        nested = pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1)
        payload = b"\x80\x04}" + ops("type") + nested + b"s."
        _refused_within(legacy_worker, payload, SMALL_MB, match="nested|opcodes")
    inside_out = b"\x80\x04" + pickle.MARK * 5_000 + pickle.TUPLE * 5_000 + b"."
    _refused_within(legacy_worker, inside_out, SMALL_MB, match="nested|opcodes")
    looped = b"\x80\x04]q\x00h\x00a."  # a list that contains itself
    _refused_within(legacy_worker, looped, SMALL_MB, match="itself")


def test_huge_ints_and_long_strings_are_refused(legacy_worker: LegacyWorker) -> None:
    for value in (2**600, "x" * (2**16 + 1), b"y" * (2**16 + 1), bytearray(2**16 + 1)):
        message = {"type": "predict", "image": _frame(), "extra": value}
        _refused_within(legacy_worker, pickle.dumps(message, protocol=4), SMALL_MB, match="refused")
    long_type = dumps({"type": "x" * 2**20})
    assert "x" * 100 not in str(_refused_within(legacy_worker, long_type, SMALL_MB + 2, match="refused"))
    _refused_within(legacy_worker, dumps(call(glob("builtins.complex"), 2**600, 0.0)), SMALL_MB)


def test_set_and_encode_cannot_multiply_memory(legacy_worker: LegacyWorker) -> None:
    # one 10,000-item list behind many set() calls, and one long str behind many _codecs.encode() calls
    items = Raw(ops(list(range(256))) + pickle.BINPUT + b"\x00")
    sets = [call(glob("builtins.set"), items)] + [call(glob("builtins.set"), Raw(pickle.BINGET + b"\x00"))] * 60
    _refused_within(legacy_worker, dumps(sets, protocol=2), SMALL_MB, match="item budget")
    text = Raw(ops("a" * 2**20) + pickle.BINPUT + b"\x01")
    encodes = [call(glob("_codecs.encode"), text, "latin1")] + [
        call(glob("_codecs.encode"), Raw(pickle.BINGET + b"\x01"), "latin1")
    ] * 40
    _refused_within(legacy_worker, dumps(encodes, protocol=2), 48, match="byte budget")


def test_build_and_reduce_misuse_on_tokens_is_refused(legacy_worker: LegacyWorker) -> None:
    u1 = np_dtype("u1")
    image = pil_image([{}, "L", (1, 1), None, b"\x00"])
    for payload in (
        build(np_frombuffer(b"\x00", u1, (1,)), (1, (1,), u1, False, b"\x00")),  # BUILD on a complete array
        build(np_scalar(u1, b"\x00"), {}),
        build(image, [{}, "L", (1, 1), None, b"\x00"]),  # a second BUILD on an image
        build(glob("PIL.Image.Image"), {"convert": None}),  # BUILD on the class itself
        build(glob("numpy.ndarray"), {}),
        newobj(glob("PIL.Image.Image"), "RGB", (1, 1)),
        newobj(glob("numpy.dtype")),
        call(glob("numpy.ndarray"), (1,)),
        call(glob("numpy.dtype"), "u1", 1, 2),
        call(glob("numpy.dtype"), "u1", False, True, "extra"),
        call(glob("numpy._core.multiarray._reconstruct"), glob("builtins.set"), (0,), b"b"),
        call(glob("numpy._core.multiarray.scalar"), u1),
        call(glob("numpy._core.multiarray.scalar"), "u1", b"\x00"),
        np_frombuffer(b"\x00", u1, (1,), "K"),
        np_frombuffer("text", u1, (4,)),
        np_frombuffer(b"\x00", "u1", (1,)),
        np_reconstruct((1, (1,), u1, 0, b"\x00")),
        np_reconstruct((2, (1,), u1, False, b"\x00")),
        np_reconstruct(None),
        newobj(glob("PIL.Image.Image")),  # an image without its state
        call(glob("builtins.set"), "abc"),
        call(glob("builtins.bytes"), 5),
        {np_frombuffer(b"\x00", u1, (1,)): 1},  # an array as a dict key
        glob("builtins.frozenset"),
    ):
        _refused_within(legacy_worker, dumps(payload), SMALL_MB)


# --------------------------------------------------------------------------- structure-aware fuzzing
# hostile_pickles() writes pickles from the admitted opcodes and globals (and a few refused ones),
# shaped like what numpy and PIL write: dtypes with forged, structured and subarray states, arrays
# by _reconstruct and _frombuffer with odd shapes and buffers, scalars, images with odd modes,
# sizes and palettes, memo puts and gets, REDUCE/BUILD/NEWOBJ on anything, and real pickles of real
# requests with bytes flipped, cut, inserted and names swapped. bench/fuzz_legacy.py runs it too.

_FUZZ_GLOBALS = (
    *sorted(ALLOWED_GLOBALS),
    "__builtin__.set",
    "__builtin__.bytes",
    "os.system",
    "posix.system",
    "builtins.eval",
    "builtins.exec",
    "builtins.getattr",
    "builtins.__import__",
    "builtins.open",
    "subprocess.Popen",
    "copyreg._reconstructor",
    "copyreg.__newobj__",
    "numpy.frombuffer",
    "numpy.load",
    "numpy.dtype.newbyteorder",
    "PIL.Image.open",
    "PIL.Image.core",
    "PIL.Image.Image.__setstate__",
    "nitrogen.serving.legacy._Image",
)
_FUZZ_TEXT = (
    "predict", "reset", "info", "type", "image", "O", "V8", "V512", "f8", "u1", "i2", "b1", "<f4", "|O", "M8",
    "U4", "S3", "c16", "<", ">", "|", "=", "C", "F", "RGB", "RGBA", "L", "P", "1", "LA", "I;16", "CMYK", "latin1",
    "zlib", f"touch {_CODE_RAN}", f"open({_CODE_RAN!r}, 'w').close()", "",
)  # fmt: skip
_FUZZ_INTS = (0, 1, 2, 3, 4, 5, 6, 8, 63, -1, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, -(2**31), 2**32, 2**40, 2**63 - 1,
              2**64, 10**30, 2**600)  # fmt: skip
_FUZZ_FLOATS = (0.0, 1.5, -1.0, math.nan, math.inf, 1e308, 5e-324)
_FUZZ_SIZES = ((0, 2**31 - 1), (2**31 - 1, 0), (16000, 16000), (8192, 8192), (8193, 1), (1, 1), (5, 6), (2, 3), (-1, 4))
_ODD_DTYPES = ("O", "V8", "V512", "U4", "S3", "M8", "c16", "f16", "u1 ", "", "u")
_ODD_MODES = ("I;16", "F", "I", "CMYK", "PA", "YCbCr", "", "RGBX")
_ALL_OPCODES = tuple(sorted({op.code.encode("latin1") for op in pickletools.opcodes}))
_ODD_ARGS = (b"", b"\x00", b"\xff\xff\xff\xff", struct.pack("<Q", 2**40), b"\x10\x00\x00\x00", b"x\ny\n", b"\x00" * 8)


def _glob_any(qualified: str, text_form: bool) -> Raw:
    """A global by STACK_GLOBAL, or by protocol 2's text GLOBAL."""
    if not text_form:
        return glob(qualified)
    module, name = qualified.rsplit(".", 1)
    return Raw(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")


def _mark(opcode: bytes, items: list[Any], empty: bytes = b"") -> Raw:
    return Raw(empty + pickle.MARK + b"".join(ops(i) for i in items) + opcode)


def _fuzz_leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(_FUZZ_INTS) | st.integers(-300, 300),
        st.sampled_from(_FUZZ_FLOATS),
        st.sampled_from(_FUZZ_TEXT),
        st.booleans() | st.none(),
        st.binary(max_size=48) | st.sampled_from([b"", b"A" * 8, bytes(64)]),
        st.binary(max_size=16).map(bytearray),
        st.builds(_glob_any, st.sampled_from(_FUZZ_GLOBALS), st.booleans()),
        st.integers(0, 7).map(lambda i: Raw(pickle.BINGET + bytes([i]))),
        st.builds(lambda op, arg: Raw(op + arg), st.sampled_from(_ALL_OPCODES), st.sampled_from(_ODD_ARGS)),
    )


def _shapes(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    small = st.lists(st.integers(0, 6), max_size=4).map(tuple)
    odd = st.lists(st.sampled_from(_FUZZ_INTS), min_size=1, max_size=3).map(tuple)
    return st.one_of(small, small, odd, st.just((0,)), children)


def _dtypes(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Raw]:
    names = st.sampled_from(sorted(ARRAY_DTYPES)) | st.sampled_from(_ODD_DTYPES) | children
    order = st.sampled_from(("<", ">", "|", "=", "!"))
    ints = st.sampled_from(_FUZZ_INTS)
    plain = st.tuples(st.just(3), order, st.none(), st.none(), st.none(), ints, ints, ints)
    flat = st.just(None)
    subarray = st.tuples(st.just(3), st.just("|"), st.tuples(children, _shapes(children)), flat, flat, ints, ints, ints)
    fields = st.tuples(
        st.just(3), st.just("|"), flat, st.tuples(st.just("a")), st.builds(lambda d, o: {"a": (d, o)}, children, ints),
        ints, ints, ints,
    )  # fmt: skip
    state = st.one_of(plain, plain, subarray, fields, children, st.none())
    dtype = st.builds(np_dtype, names, state)
    twice = st.builds(build, dtype, state)  # a second BUILD
    return dtype | twice


@st.composite
def _arrays(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> Raw:
    name = draw(st.sampled_from(sorted(ARRAY_DTYPES)) | st.sampled_from(_ODD_DTYPES))
    plain_state = (3, draw(st.sampled_from("<>|=")), None, None, None, -1, -1, draw(st.sampled_from((0, 63, 1 << 30))))
    dtype = draw(st.just(np_dtype(name, plain_state)) | _dtypes(children))
    shape = draw(_shapes(children))
    itemsize = np.dtype(name).itemsize if name in ARRAY_DTYPES else 8
    exact = -1
    if isinstance(shape, tuple) and all(type(d) is int and 0 <= d < 64 for d in shape):
        exact = math.prod(shape) * itemsize if math.prod(shape) * itemsize <= 4096 else -1
    data = draw(
        st.one_of(
            st.just(bytes(exact)) if exact >= 0 else st.binary(max_size=8),
            st.just(bytearray(exact)) if exact >= 0 else st.binary(max_size=8),
            st.binary(max_size=64),
            children,
        )
    )
    if draw(st.booleans()):
        return np_frombuffer(data, dtype, shape, draw(st.sampled_from(("C", "F", "K")) | children))
    state = draw(
        st.one_of(
            st.builds(lambda f: (1, shape, dtype, f, data), st.booleans() | st.sampled_from((0, 1, 2))),
            st.builds(lambda v: (v, shape, dtype, False, data), st.sampled_from((0, 2, -1))),
            st.just((shape, dtype, False, data)),
            st.just((1, shape, dtype, False, [None] * 2)),
            children,
            st.none(),
        )
    )
    made = draw(st.just((0,)) | _shapes(children)), draw(st.just(b"b") | _dtypes(children) | children)
    return np_reconstruct(state, shape=made[0], typecode=made[1])


@st.composite
def _images(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> Raw:
    mode = draw(st.sampled_from(tuple(IMAGE_MODES)) | st.sampled_from(_ODD_MODES) | children)
    size = draw(st.sampled_from(_FUZZ_SIZES) | st.tuples(st.integers(0, 9), st.integers(0, 9)) | children)
    bands = IMAGE_MODES.get(mode, 3) if isinstance(mode, str) else 3
    if isinstance(size, tuple) and len(size) == 2 and all(type(s) is int and s >= 0 for s in size):
        exact = (size[0] + 7) // 8 * size[1] if mode == "1" else size[0] * size[1] * bands
    else:
        exact = -1
    data = (
        draw(st.just(bytes(exact)) if 0 <= exact <= 4096 else st.binary(max_size=16))
        if draw(st.booleans())
        else draw(st.binary(max_size=64) | children)
    )
    palette = draw(
        st.none() | st.just([]) | st.lists(st.integers(-1, 256), max_size=12) | st.just(list(range(256)) * 3) | children
    )
    info = draw(st.just({}) | children)
    state = draw(st.just([info, mode, size, palette, data]) | st.just((info, mode, size, palette, data)) | children)
    made = newobj(glob("PIL.Image.Image"), *draw(st.lists(children, max_size=2)))
    return draw(st.sampled_from((build(made, state), build(build(made, state), state), made)))


def _fuzz_extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    callables = st.builds(_glob_any, st.sampled_from(_FUZZ_GLOBALS), st.booleans()) | children
    pairs = st.lists(st.tuples(children, children), max_size=3).map(lambda kv: [x for pair in kv for x in pair])
    return st.one_of(
        st.lists(children, max_size=4).map(tuple),
        st.lists(children, max_size=4),
        pairs.map(lambda items: _mark(pickle.SETITEMS, items, pickle.EMPTY_DICT)),
        st.lists(children, max_size=4).map(lambda items: _mark(pickle.ADDITEMS, items, pickle.EMPTY_SET)),
        st.lists(children, max_size=4).map(lambda items: _mark(pickle.FROZENSET, items)),
        st.builds(lambda fn, args: call(fn, *args), callables, st.lists(children, max_size=4)),
        st.builds(build, children, children),
        st.builds(lambda cls, args: newobj(cls, *args), callables, st.lists(children, max_size=2)),
        st.builds(lambda value, i: Raw(ops(value) + pickle.BINPUT + bytes([i])), children, st.integers(0, 7)),
        st.builds(lambda value: Raw(ops(value) + pickle.MEMOIZE), children),
        _dtypes(children),
        _arrays(children),
        st.builds(np_scalar, _dtypes(children), st.binary(max_size=9) | children),
        _images(children),
    )


@st.composite
def _mutated_real_pickles(draw: st.DrawFn) -> bytes:
    """A real pickle of a real request (numpy arrays, PIL images, scalars, sets), then damaged."""
    protocol = draw(st.integers(2, 5))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    frame = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    mode = draw(st.sampled_from(("array", "RGB", "RGBA", "L", "P", "1", "LA", "I", "F", "CMYK")))
    image = frame if mode == "array" else Image.fromarray(frame).convert(mode)
    value: dict[str, Any] = {"type": "predict", "image": image}
    if draw(st.booleans()):
        value["extra"] = [np.float32(1.5), np.int64(-3), {1, 2}, frozenset("ab"), 1j, b"", np.zeros((2, 2), ">f8")]
    payload = bytearray(pickle.dumps(value, protocol=protocol))
    if len(payload) > 11 and payload[2] == pickle.FRAME[0] and draw(st.booleans()):
        del payload[2:11]  # without its FRAME the rest stays readable after lengths change
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(("byte", "cut", "delete", "insert", "name")))
        at = draw(st.integers(2, max(2, len(payload) - 1)))  # past PROTO: what follows is what is interesting
        if how == "byte" and at < len(payload):
            payload[at] = draw(st.integers(0, 255) | st.sampled_from(tuple(op[0] for op in _ALL_OPCODES)))
        elif how == "cut":
            del payload[max(3, at) :]
        elif how == "delete":
            del payload[at : at + draw(st.integers(1, 8))]
        elif how == "insert":
            payload[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(_ALL_OPCODES))
        else:
            old = draw(st.sampled_from(("u1", ">", "<", "|", "f8", "f4", "i8", "latin1", "RGB", "P", "L", mode)))
            new = draw(st.sampled_from(_FUZZ_TEXT + _ODD_DTYPES))
            for encoded in (ops(old), pickle.BINUNICODE + struct.pack("<I", len(old)) + old.encode()):
                payload = payload.replace(encoded, ops(new) if encoded[:1] != pickle.BINUNICODE else (
                    pickle.BINUNICODE + struct.pack("<I", len(new.encode())) + new.encode()))  # fmt: skip
    return bytes(payload)


def hostile_pickles() -> st.SearchStrategy[bytes]:
    """Generated hostile legacy messages: structure-aware opcode streams, and damaged real pickles."""
    node = st.recursive(_fuzz_leaves(), _fuzz_extend, max_leaves=12)
    request = st.builds(lambda kind, image: {"type": kind, "image": image}, st.sampled_from(_FUZZ_TEXT[:4]), node)
    streams = st.builds(lambda protocol, top: dumps(top, protocol), st.integers(2, 5), request | node)
    return st.one_of(streams, streams, _mutated_real_pickles())


FUZZ_PEAK_MB = 64  # what one generated message (a few KB) may cost the worker, at most


def assert_parsed_or_refused(report: dict[str, Any], payload: bytes) -> None:
    """What every legacy message must come to: a parse or a LegacyPickleError, no crash, little memory."""
    assert outcome(report) in ("accepted", "refused"), (report, payload)
    for load in ("safe_loads", "parse_legacy_request"):
        assert report[load]["peak_mb"] < FUZZ_PEAK_MB, (load, report, payload)
        assert len(report[load].get("message", "")) < 1000, (load, report, payload)


@settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(payload=hostile_pickles())
def test_fuzzed_legacy_pickles_parse_or_are_refused_and_never_crash(
    legacy_worker: LegacyWorker, payload: bytes
) -> None:
    assert_parsed_or_refused(legacy_worker.check(payload), payload)
