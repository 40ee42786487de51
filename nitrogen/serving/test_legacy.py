"""Tests for the opt-in legacy (pickled) protocol: round trips, and refusal of anything but plain data."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nitrogen.serving.legacy import (
    ALLOWED_GLOBALS,
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
