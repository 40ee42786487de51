"""The wire format's bounded decoder, its checks and its short, non-quoting error messages."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from nitrogen.serving import protocol
from nitrogen.serving.protocol import REPLY_LIMITS, REQUEST_LIMITS, ProtocolError, decode, encode, validate_request


def test_arrays_round_trip_and_the_allow_list_holds():
    frame = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    out = decode(encode({"v": 1, "type": "predict", "frame": frame}))
    np.testing.assert_array_equal(out["frame"], frame)
    with pytest.raises(TypeError, match="cannot be sent"):
        encode({"a": np.zeros(2, dtype=object)})
    forged = msgpack.packb({"a": {"__nd__": 1, "dtype": "object", "shape": [1], "data": b"\0" * 8}})
    with pytest.raises(ProtocolError, match="not allowed"):
        decode(forged)


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb({"v": 1, "type": "ping", "x": [[] for _ in range(5_000)]}),  # many empty lists
        msgpack.packb({"v": 1, "type": "ping", "x": [{} for _ in range(60)] * 2}),  # maps are counted too
        msgpack.packb({"v": 1, "type": "ping", "x": [[[]] * 60] * 60}),  # 3600 containers, 60 per list
        b"\x91" * 100_000 + b"\xc0",  # nested 100,000 deep
        msgpack.packb({"v": 1, "type": "ping", "x": list(range(65))}),  # one list over max_items
        msgpack.packb({"v": 1, "type": "ping", "x": "s" * 1025}),  # one string over max_str_len
        msgpack.packb({"v": 1, "type": "ping", "x": msgpack.ExtType(5, b"abc")}),  # extension types
        msgpack.packb({"v": 1, "type": "ping", "x": msgpack.Timestamp(1, 0)}),
        msgpack.packb({1: 2}),  # non-string keys
    ],
)
def test_requests_over_the_decode_limits_are_refused(payload):
    with pytest.raises(ProtocolError):
        decode(payload)


def test_the_container_count_covers_the_whole_message():
    # Each list is within max_items; the count over the whole message refuses it.
    payload = msgpack.packb([[] for _ in range(1_000_000)])
    limits = protocol.DecodeLimits(max_containers=10, max_items=2_000_000, max_str_len=16)
    with pytest.raises(ProtocolError, match="at most 10 maps and lists"):
        decode(payload, limits=limits)
    assert decode(msgpack.packb({"a": [[]] * 8}), limits=limits) == {"a": [[]] * 8}


def test_replies_have_room_for_a_big_info_map():
    info = {"games": {f"game-{i}": i for i in range(5_000)}, "layout": [{"i": i} for i in range(25)]}
    reply = encode(protocol.ok(1, info=info))
    with pytest.raises(ProtocolError):
        decode(reply)  # the request limits
    assert decode(reply, limits=REPLY_LIMITS)["info"] == info
    assert REQUEST_LIMITS.max_containers < REPLY_LIMITS.max_containers


def test_errors_are_cut_short_and_describe_without_quoting():
    long = protocol.error("x" * 10_000, 7)
    assert len(long["error"]) == protocol.MAX_ERROR_CHARS and len(encode(long)) < 1024
    marker = "zz-marker-zz"
    for value in (marker, marker.encode(), [marker], {"k": marker}, 10**40):
        assert marker not in protocol.describe(value) and len(protocol.describe(value)) < 40
    assert protocol.describe(3) == "3" and protocol.describe(None) == "None"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"v": "zz-marker-zz", "type": "ping"}, "unsupported protocol version"),
        ({"v": True, "type": "ping"}, "unsupported protocol version"),
        ({"v": 1, "type": "zz-marker-zz"}, "unknown request type"),
        ({"v": 1, "type": "ping", "id": "zz-marker-zz" * 10}, "'id' must be"),
        ({"v": 1, "type": "ping", "id": 1.5}, "'id' must be"),
        ({"v": 1, "type": "ping", "token": b"short"}, "'token' must be 16 to 64 bytes"),
        ({"v": 1, "type": "ping", "token": "zz-marker-zz-zz-marker-zz"}, "'token' must be"),
        ({"v": 1, "type": "ping", "game": True}, "'game'"),
        ({"v": 1, "type": "ping", "cfg_scale": float("nan")}, "'cfg_scale'"),
    ],
)
def test_invalid_fields_are_named_not_quoted(message, expected):
    with pytest.raises(ProtocolError, match=expected) as info:
        validate_request(message)
    assert "zz-marker-zz" not in str(info.value)


def test_request_ids_are_echoed_only_when_short():
    assert protocol.request_id({"id": 5}) == 5
    assert protocol.request_id({"id": "a" * protocol.MAX_ID_CHARS}) == "a" * protocol.MAX_ID_CHARS
    assert protocol.request_id({"id": "a" * (protocol.MAX_ID_CHARS + 1)}) is None
    assert protocol.request_id({"id": [1]}) is None
    assert validate_request({"v": 1, "type": "ping", "token": bytes(16), "id": "x"})["token"] == bytes(16)


def test_array_errors_do_not_quote_the_sender():
    spec = {"__nd__": 1, "dtype": "zz-marker-zz", "shape": [1], "data": b"\0"}
    for bad in (
        spec,
        {**spec, "dtype": "uint8", "shape": ["zz-marker-zz"]},
        {**spec, "dtype": "uint8", "data": "zz-marker-zz"},
    ):
        with pytest.raises(ProtocolError) as info:
            decode(msgpack.packb({"a": bad}))
        assert "zz-marker-zz" not in str(info.value)


def test_declared_shapes_must_account_for_the_bytes_exactly():
    for shape in ([2**25] * 4, [2**16] * 4, [2**25, 2**25, 2**25, 1]):  # products that wrap in int64
        spec = {"__nd__": 1, "dtype": "uint8", "shape": shape, "data": b""}
        with pytest.raises(ProtocolError, match="needs .* bytes, got 0"):
            decode(msgpack.packb({"a": spec}))
    empty = decode(msgpack.packb({"a": {"__nd__": 1, "dtype": "float32", "shape": [2**25, 0], "data": b""}}))["a"]
    assert empty.shape == (2**25, 0)
    with pytest.raises(ProtocolError, match="exceeds the 8192-pixel limit"):
        validate_request({"v": 1, "type": "predict", "frame": np.zeros((2**25, 2**25, 0), np.uint8)})


def test_prefix_fields_are_checked_on_the_wire():
    frame = np.zeros((8, 8, 3), np.uint8)
    prefix = np.zeros((10, 25), np.float32)
    base = {"v": 1, "type": "predict", "frame": frame}
    assert validate_request(base | {"prefix": prefix, "delay": 3, "chunking": "prefix", "beta": 2.0})
    bad = [
        ({"prefix": prefix.astype(np.float64)}, "float32"),
        ({"prefix": np.zeros((10, 24), np.float32)}, "shape"),
        ({"prefix": np.zeros((0, 25), np.float32)}, "shape"),
        ({"prefix": np.full((2, 25), np.inf, np.float32)}, "finite"),
        ({"prefix": np.full((2, 25), 3e38, np.float32)}, "within"),
        ({"prefix": prefix, "delay": 11}, "delay"),
        ({"prefix": prefix, "delay": True}, "delay"),
        ({"prefix": prefix, "chunking": "nope"}, "chunking"),
        ({"prefix": prefix, "beta": float("nan")}, "beta"),
        ({"delay": 2}, "need a 'prefix'"),
    ]
    for fields, message in bad:
        with pytest.raises(ProtocolError, match=message):
            validate_request(base | fields)
