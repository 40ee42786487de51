"""The server over real ZeroMQ sockets on free loopback ports, with the tiny golden checkpoints."""

from __future__ import annotations

import pickle
import re
import threading
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitrogen import InferenceSession
from nitrogen.inference.engine import PolicyEngine
from nitrogen.serving import protocol
from nitrogen.serving.client import ModelClient, ServerError
from nitrogen.serving.server import InferenceServer, ServerConfig


@pytest.fixture(scope="module")
def golden(golden_dir):
    return {name: np.load(golden_dir / f"{name}.npz") for name in ("released_layout", "two_frames_cfg_sinusoidal")}


@pytest.fixture(scope="module")
def engine(golden_dir):
    return PolicyEngine.from_checkpoint(golden_dir / "released_layout.pt", device="cpu")


@pytest.fixture()
def server(engine):
    with InferenceServer(engine, ServerConfig(port=0, batch_wait_ms=1)) as srv:
        yield srv


def _request(sock: zmq.Socket, message: dict, timeout_ms: int = 10_000) -> dict:
    sock.send(protocol.encode(message))
    assert sock.poll(timeout_ms), "no reply"
    return protocol.decode(sock.recv())


def _socket(ctx: zmq.Context, address: str, kind: int = zmq.REQ, identity: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(address)
    return sock


def test_predictions_equal_the_in_process_session(server, golden, golden_dir):
    z = golden["released_layout"]
    local = InferenceSession.from_checkpoint(golden_dir / "released_layout.pt", device="cpu")
    with ModelClient(server.address, timeout_s=20) as client:
        for i in range(2):
            remote = client.predict(z[f"image_{i}"], noise=z[f"noise_{i}"])
            want = local.predict(z[f"image_{i}"], noise=z[f"noise_{i}"])
            np.testing.assert_allclose(remote.action_tensor, want.action_tensor, atol=1e-5)
            np.testing.assert_array_equal(remote.buttons, want.buttons)
            assert np.abs(remote.action_tensor - z[f"action_tensor_{i}"]).max() <= 1e-4
            assert remote.timing_ms["server_ms"] > 0 and "queue_ms" in remote.timing_ms
        # A seed through the protocol draws the same noise as a session seeded alike.
        seeded = client.predict(z["image_0"], seed=11)
    again = InferenceSession.from_checkpoint(golden_dir / "released_layout.pt", device="cpu", seed=11)
    np.testing.assert_allclose(seeded.action_tensor, again.predict(z["image_0"]).action_tensor, atol=1e-5)


def test_clients_have_independent_histories_and_reset_only_their_own(golden_dir, golden):
    path = golden_dir / "two_frames_cfg_sinusoidal.pt"
    z = golden["two_frames_cfg_sinusoidal"]
    engine = PolicyEngine.from_checkpoint(path, device="cpu")
    noise = z["noise_1"]
    with InferenceServer(engine, ServerConfig(port=0, cfg_scale=2.0)) as srv:
        with ModelClient(srv.address) as a, ModelClient(srv.address) as b:
            a.predict(z["image_0"], noise=noise)
            a_two = a.predict(z["image_1"], noise=noise)
            b_one = b.predict(z["image_1"], noise=noise)
            b.reset()
            assert a.info()["session"]["frames_in_history"] == 2
            assert b.info()["session"]["frames_in_history"] == 0
    np.testing.assert_allclose(a_two.action_tensor, z["action_tensor_1"], atol=1e-4)
    fresh = InferenceSession.from_checkpoint(path, device="cpu", cfg_scale=2.0).predict(z["image_1"], noise=noise)
    np.testing.assert_allclose(b_one.action_tensor, fresh.action_tensor, atol=1e-5)
    assert not np.allclose(a_two.action_tensor, b_one.action_tensor)


def test_concurrent_clients_are_batched_and_match_sequential_results(engine, golden):
    z = golden["released_layout"]
    frames = [np.ascontiguousarray(np.roll(z["image_0"], 17 * k, axis=1)) for k in range(4)]
    noises = [np.random.default_rng(k).standard_normal((18, 25)).astype(np.float32) for k in range(4)]
    results: dict[int, np.ndarray] = {}
    sizes: list[int] = []
    barrier = threading.Barrier(4)
    with InferenceServer(engine, ServerConfig(port=0, batch_wait_ms=200, max_batch=8)) as srv:

        def run(k: int) -> None:
            ctx = zmq.Context.instance()
            sock = _socket(ctx, srv.address)
            barrier.wait()
            reply = _request(sock, {"v": 1, "type": "predict", "id": k, "frame": frames[k], "noise": noises[k]})
            sock.close()
            results[k] = reply["pred"]["action_tensor"]
            sizes.append(reply["batch_size"])

        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert max(sizes) > 1, f"requests were never batched: {sizes}"
    for k in range(4):
        alone = InferenceSession.from_checkpoint(engine.checkpoint.path, device="cpu").predict(
            frames[k], noise=noises[k]
        )
        np.testing.assert_allclose(results[k], alone.action_tensor, atol=1e-5)


def test_bad_requests_get_errors_and_the_server_keeps_serving(server, golden):
    ctx = zmq.Context.instance()
    sock = _socket(ctx, server.address)
    z = golden["released_layout"]
    cases = [
        ({"v": 1, "type": "predict", "frame": z["image_0"].astype(np.float32)}, "uint8"),
        ({"v": 1, "type": "predict", "frame": z["image_0"][:, :, :2]}, r"\(H, W, 3\)"),
        ({"v": 1, "type": "predict"}, "needs 'frame'"),
        ({"v": 2, "type": "ping"}, "unsupported protocol version"),
        ({"v": 1, "type": "launch"}, "unknown request type"),
        ({"v": 1, "type": "predict", "frame": z["image_0"], "noise": np.zeros((3, 25), np.float32)}, "noise"),
        ({"v": 1, "type": "predict", "frame": z["image_0"], "game": "zelda"}, "no game mapping"),
    ]
    for message, expected in cases:
        reply = _request(sock, message)
        assert reply["status"] == "error", message
        assert re.search(expected, reply["error"]), reply["error"]
    full = protocol.encode({"v": 1, "type": "predict", "frame": z["image_0"]})
    for payload, expected in ((full[: len(full) // 2], "msgpack"), (b"\x01", "map"), (b"", "msgpack")):
        sock.send(payload)
        assert sock.poll(5000)
        reply = protocol.decode(sock.recv())
        assert reply["status"] == "error" and expected in reply["error"]
    assert _request(sock, {"v": 1, "type": "ping", "id": "still-alive"})["id"] == "still-alive"
    sock.close()


def test_oversized_messages_are_dropped_by_zeromq(engine, golden):
    z = golden["released_layout"]
    with InferenceServer(engine, ServerConfig(port=0, max_message_bytes=300_000)) as srv:
        ctx = zmq.Context.instance()
        big = _socket(ctx, srv.address, zmq.DEALER)
        big.send(protocol.encode({"v": 1, "type": "predict", "frame": np.zeros((600, 600, 3), np.uint8)}))
        other = _socket(ctx, srv.address)
        reply = _request(other, {"v": 1, "type": "predict", "frame": z["image_0"], "noise": z["noise_0"]})
        assert reply["status"] == "ok"
        np.testing.assert_allclose(reply["pred"]["action_tensor"], z["action_tensor_0"], atol=1e-4)
        assert not big.poll(200), "an oversized message must not be answered"
        big.close()
        other.close()


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_payloads_never_take_the_server_down(fuzz_server, data):
    sock, valid = fuzz_server
    kind = data.draw(st.sampled_from(["random", "mutated", "structured"]))
    if kind == "random":
        payload = data.draw(st.binary(max_size=512))
    elif kind == "mutated":
        raw = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        payload = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    else:
        json_like = st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats()
            | st.text(max_size=8)
            | st.binary(max_size=16),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
            ),
            max_leaves=12,
        )
        message = data.draw(st.dictionaries(st.sampled_from(["v", "type", "frame", "noise", "seed", "id"]), json_like))
        payload = protocol.encode(message)
    sock.send(payload)
    assert sock.poll(10_000), f"no reply to {payload[:40]!r}"  # every addressable message is answered
    reply = protocol.decode(sock.recv())
    assert reply["status"] in ("ok", "error")


@pytest.fixture(scope="module")
def fuzz_server(engine, golden):
    z = golden["released_layout"]
    valid = protocol.encode({"v": 1, "type": "predict", "id": 1, "frame": z["image_0"][:32, :32], "seed": 1})
    with InferenceServer(engine, ServerConfig(port=0, batch_wait_ms=0)) as srv:
        ctx = zmq.Context.instance()
        sock = _socket(ctx, srv.address, zmq.DEALER, identity=b"fuzzer")
        yield sock, valid
        # After thousands of hostile payloads, another client still gets a correct answer.
        other = _socket(ctx, srv.address)
        reply = _request(other, {"v": 1, "type": "predict", "frame": z["image_0"], "noise": z["noise_0"]})
        assert reply["status"] == "ok"
        np.testing.assert_allclose(reply["pred"]["action_tensor"], z["action_tensor_0"], atol=1e-4)
        assert srv.stats.snapshot()["errors"] > 100
        sock.close()
        other.close()


def test_curve_round_trip_and_unknown_keys_get_no_answer(engine, tmp_path, golden):
    from nitrogen.serving.keys import ClientCurve, generate_keys

    keys = generate_keys(tmp_path / "keys")
    strangers = generate_keys(tmp_path / "strangers")
    z = golden["released_layout"]
    with InferenceServer(engine, ServerConfig(port=0, curve_dir=tmp_path / "keys")) as srv:
        allowed = ClientCurve.from_files(keys.client_secret[0], keys.server_public)
        with ModelClient(srv.address, curve=allowed, timeout_s=10) as client:
            out = client.predict(z["image_0"], noise=z["noise_0"])
        np.testing.assert_allclose(out.action_tensor, z["action_tensor_0"], atol=1e-4)
        unknown = ClientCurve.from_files(strangers.client_secret[0], keys.server_public)
        with ModelClient(srv.address, curve=unknown, timeout_s=0.5, retries=1) as client, pytest.raises(TimeoutError):
            client.ping()
        plain = _socket(zmq.Context.instance(), srv.address)
        plain.send(protocol.encode({"v": 1, "type": "ping"}))
        assert not plain.poll(500), "a client without CURVE must get no answer"
        plain.close()


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_legacy_pickle_clients(engine, golden, tmp_path):
    z = golden["released_layout"]
    with InferenceServer(engine, ServerConfig(port=0, legacy_pickle=True)) as srv:
        sock = _socket(zmq.Context.instance(), srv.address)
        sock.send(pickle.dumps({"type": "predict", "image": z["image_0"]}))
        assert sock.poll(10_000)
        reply = pickle.loads(sock.recv())
        assert reply["status"] == "ok" and set(reply["pred"]) == {"j_left", "j_right", "buttons"}
        assert reply["pred"]["buttons"].shape == (18, 21)
        for kind in ("info", "reset"):
            sock.send(pickle.dumps({"type": kind}))
            assert sock.poll(5000)
            assert pickle.loads(sock.recv())["status"] == "ok"
        marker = tmp_path / "pwned"
        sock.send(pickle.dumps({"type": "predict", "image": _RunsACommand(marker)}))
        assert sock.poll(5000)
        refused = pickle.loads(sock.recv())
        assert refused["status"] == "error" and "posix.system" in refused["message"]
        assert not marker.exists()
        # msgpack clients are still served on the same socket.
        assert _request(sock, {"v": 1, "type": "ping"})["status"] == "ok"
        sock.close()


def test_legacy_pickle_is_off_by_default(server, tmp_path):
    sock = _socket(zmq.Context.instance(), server.address)
    sock.send(pickle.dumps({"type": "info"}))
    assert sock.poll(5000)
    assert protocol.decode(sock.recv())["status"] == "error"
    sock.close()


def test_restarted_server_client_reconnects(golden_dir, golden):
    z = golden["released_layout"]
    engine = PolicyEngine.from_checkpoint(golden_dir / "released_layout.pt", device="cpu")
    first = InferenceServer(engine, ServerConfig(port=0)).start()
    address = first.address
    port = int(address.rsplit(":", 1)[1])
    client = ModelClient(address, timeout_s=1.0, retries=5)
    try:
        assert client.predict(z["image_0"], noise=z["noise_0"]).horizon == 18
        first.stop()
        second = InferenceServer(engine, ServerConfig(port=port)).start()
        try:
            out = client.predict(z["image_0"], noise=z["noise_0"])
            np.testing.assert_allclose(out.action_tensor, z["action_tensor_0"], atol=1e-4)
        finally:
            second.stop()
    finally:
        client.close()


def test_shutdown_answers_requests_in_flight(engine, golden):
    z = golden["released_layout"]
    srv = InferenceServer(engine, ServerConfig(port=0, batch_wait_ms=300)).start()
    sock = _socket(zmq.Context.instance(), srv.address)
    sock.send(protocol.encode({"v": 1, "type": "predict", "frame": z["image_0"], "noise": z["noise_0"]}))
    while srv._jobs.empty() and srv._inflight == 0:
        sock.poll(1)
    srv.stop()
    assert sock.poll(5000), "the request in flight was not answered"
    assert protocol.decode(sock.recv())["status"] == "ok"
    sock.close()


def test_sessions_are_bounded_and_expire(engine, golden):
    z = golden["released_layout"]
    ctx = zmq.Context.instance()
    with InferenceServer(engine, ServerConfig(port=0, max_sessions=2, session_ttl_s=3600)) as srv:
        socks = [_socket(ctx, srv.address, identity=f"c{k}".encode()) for k in range(3)]
        predict = {"v": 1, "type": "predict", "frame": z["image_0"], "seed": 0}
        for sock in socks[:2]:
            assert _request(sock, predict)["status"] == "ok"
        # Full of active sessions: the newcomer is refused and nobody is evicted.
        refused = _request(socks[2], predict)
        assert refused["status"] == "error" and "active sessions" in refused["error"]
        assert list(srv.sessions) == [b"c0", b"c1"]
        # Once the least recently seen session has been idle for session_idle_s, a newcomer takes its place.
        srv.config.session_idle_s = 1e-9
        assert _request(socks[2], predict)["status"] == "ok"
        assert list(srv.sessions) == [b"c1", b"c2"]
        srv.config.session_ttl_s = 1e-9
        srv._expire_sessions()
        assert not srv.sessions
        for sock in socks:
            sock.close()


def test_exposure_rules():
    with pytest.raises(ValueError, match="CURVE keys"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="legacy-pickle"):
        ServerConfig(host="0.0.0.0", insecure=True, legacy_pickle=True)
    assert ServerConfig(host="0.0.0.0", insecure=True).insecure
    assert ServerConfig(host="::1").host == "::1"
    assert ServerConfig().host == "127.0.0.1"


def test_server_error_surfaces_in_the_client(server, golden):
    with ModelClient(server.address) as client, pytest.raises(ServerError, match="noise"):
        client.predict(golden["released_layout"]["image_0"], noise=np.zeros((18, 24), np.float32))


def test_stats_line_is_logged(engine, golden, caplog):
    z = golden["released_layout"]
    with caplog.at_level("INFO", logger="nitrogen.serving.server"):
        with InferenceServer(engine, ServerConfig(port=0, stats_interval_s=0.05)) as srv:
            with ModelClient(srv.address) as client:
                client.predict(z["image_0"], seed=0)
                client.ping()
            deadline = time.monotonic() + 5
            while "predictions=1 " not in caplog.text and time.monotonic() < deadline:
                threading.Event().wait(0.05)
    line = [r.getMessage() for r in caplog.records if "predictions=1 " in r.getMessage()][-1]
    assert re.search(r"requests=\d+ predictions=1 errors=0 sessions=1 batches=1 mean_batch=1.00 max_batch=1", line)
    assert re.search(r"p50=\d+\.\dms p95=\d+\.\dms", line)


def test_serve_command_starts_answers_and_stops_on_sigterm(golden_dir, golden):
    import signal
    import subprocess
    import sys

    z = golden["released_layout"]
    cmd = [sys.executable, "-m", "nitrogen.cli", "serve", str(golden_dir / "released_layout.pt"), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        for line in proc.stdout:
            match = re.search(r"tcp://127\.0\.0\.1:\d+", line)
            if match:
                address = match.group(0)
                break
        assert address, "the server did not print its address"
        with ModelClient(address, timeout_s=30) as client:
            out = client.predict(z["image_0"], noise=z["noise_0"])
        np.testing.assert_allclose(out.action_tensor, z["action_tensor_0"], atol=1e-4)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pipelined_requests_from_one_client_keep_their_order(golden_dir, golden):
    # A DEALER may send several predicts without waiting; each must see the history before it.
    path = golden_dir / "two_frames_cfg_sinusoidal.pt"
    z = golden["two_frames_cfg_sinusoidal"]
    engine = PolicyEngine.from_checkpoint(path, device="cpu")
    with InferenceServer(engine, ServerConfig(port=0, cfg_scale=2.0, batch_wait_ms=100)) as srv:
        sock = _socket(zmq.Context.instance(), srv.address, zmq.DEALER, identity=b"pipeliner")
        for i in range(2):
            sock.send(
                protocol.encode(
                    {"v": 1, "type": "predict", "id": i, "frame": z[f"image_{i}"], "noise": z[f"noise_{i}"]}
                )
            )
        replies = {}
        for _ in range(2):
            assert sock.poll(10_000)
            reply = protocol.decode(sock.recv())
            replies[reply["id"]] = reply
        sock.close()
    for i in range(2):
        np.testing.assert_allclose(replies[i]["pred"]["action_tensor"], z[f"action_tensor_{i}"], atol=1e-4)


def test_predict_reply_carries_the_action_tensor_only(server, golden):
    z = golden["released_layout"]
    sock = _socket(zmq.Context.instance(), server.address)
    reply = _request(sock, {"v": 1, "type": "predict", "id": 3, "frame": z["image_0"], "noise": z["noise_0"]})
    sock.close()
    assert set(reply["pred"]) == {"action_tensor"}
    assert reply["pred"]["action_tensor"].dtype == np.float32 and reply["pred"]["action_tensor"].shape == (18, 25)
    assert reply["batch_size"] == 1 and reply["server_ms"] >= reply["queue_ms"] >= 0


def test_one_frame_limit_and_one_frame_check(server):
    from nitrogen.inference import preprocessing

    assert protocol.MAX_FRAME_SIDE is preprocessing.MAX_FRAME_SIDE
    sock = _socket(zmq.Context.instance(), server.address)
    too_tall = np.zeros((preprocessing.MAX_FRAME_SIDE + 1, 1, 3), np.uint8)
    cases = [
        (too_tall, f"exceeds the {preprocessing.MAX_FRAME_SIDE}-pixel limit"),  # the wire budget
        (np.zeros((0, 4, 3), np.uint8), "frame is empty"),  # the engine's check
        (np.zeros((4, 4, 3), np.int16), "dtype uint8"),
    ]
    for frame, expected in cases:
        reply = _request(sock, {"v": 1, "type": "predict", "frame": frame})
        assert reply["status"] == "error" and expected in reply["error"], reply
    assert server.sessions[next(iter(server.sessions))].predictions == 0
    sock.close()


def test_a_224_checkpoint_is_served_at_its_own_frame_size(tiny_ckpt_224):
    engine = PolicyEngine.from_checkpoint(tiny_ckpt_224, device="cpu")
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    noise = np.random.default_rng(1).standard_normal((engine.action_horizon, 25)).astype(np.float32)
    with InferenceServer(engine, ServerConfig(port=0)) as srv, ModelClient(srv.address, timeout_s=20) as client:
        info = client.info()
        assert info["image_size"] == 224 and info["name"] == "tiny224"
        assert client.spec.image_size == 224 and client.spec.name == "tiny224"
        remote = client.predict(frame, noise=noise)
    local = InferenceSession(engine).predict(frame, noise=noise)
    np.testing.assert_allclose(remote.action_tensor, local.action_tensor, atol=1e-5)


# ------------------------------------------------------------------------------------ hostile clients
# Each test below is an attack of issue 18 against a real server on loopback; each failed before the fix.


class _HeldEngine(PolicyEngine):
    """A real engine whose first batch waits for ``release``: requests stay in flight meanwhile."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holding = threading.Event()
        self.release = threading.Event()

    def predict_batch(self, requests):
        if not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(60), "the test never released the held batch"
        return super().predict_batch(requests)


def _until(condition, timeout_s: float = 20.0) -> None:
    """Wait, bounded, for a condition that another thread makes true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        threading.Event().wait(0.01)


def _drain(sock: zmq.Socket, count: int, timeout_ms: int = 10_000) -> list[dict]:
    replies = []
    for _ in range(count):
        assert sock.poll(timeout_ms), f"only {len(replies)} of {count} replies came"
        replies.append(protocol.decode(sock.recv_multipart()[-1]))
    return replies


@pytest.fixture(scope="module")
def cfg_engine(golden_dir):
    return PolicyEngine.from_checkpoint(golden_dir / "two_frames_cfg_sinusoidal.pt", device="cpu")


def test_a_socket_claiming_a_clients_routing_id_cannot_touch_its_session(cfg_engine, golden):
    z = golden["two_frames_cfg_sinusoidal"]
    config = ServerConfig(port=0, cfg_scale=2.0, batch_wait_ms=1)
    with InferenceServer(cfg_engine, config) as srv, ModelClient(srv.address, client_id=b"victim") as victim:
        victim.predict(z["image_0"], noise=z["noise_1"])
        attacker = _socket(zmq.Context.instance(), srv.address, zmq.DEALER, identity=b"victim")
        for message in (
            {"v": 1, "type": "reset"},
            {"v": 1, "type": "info"},
            {"v": 1, "type": "predict", "frame": z["image_1"], "cfg_scale": 50.0},
        ):
            attacker.send_multipart([b"", protocol.encode(message)])
        assert not attacker.poll(500), "a second connection with a live routing id must get nothing"
        session = victim.info()["session"]
        assert session["frames_in_history"] == 1 and session["cfg_scale"] == 2.0
        # Not cut off, not reset, not poisoned: the second frame sees the first, as in the golden run.
        out = victim.predict(z["image_1"], noise=z["noise_1"])
        attacker.close()
    np.testing.assert_allclose(out.action_tensor, z["action_tensor_1"], atol=1e-4)


def test_in_flight_replies_go_to_the_connection_that_asked(engine, golden):
    z = golden["released_layout"]
    ctx = zmq.Context.instance()
    held = _HeldEngine.from_checkpoint(engine.checkpoint.path, device="cpu")
    with InferenceServer(held, ServerConfig(port=0, batch_wait_ms=1)) as srv:
        victim = _socket(ctx, srv.address, zmq.DEALER, identity=b"victim")
        victim.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "id": 1, "frame": z["image_0"]})])
        _until(held.holding.is_set)  # the victim's request is in the model now
        attacker = _socket(ctx, srv.address, zmq.DEALER, identity=b"victim")
        attacker.send_multipart([b"", protocol.encode({"v": 1, "type": "ping", "id": 2})])
        held.release.set()
        [reply] = _drain(victim, 1)
        assert reply["status"] == "ok" and reply["id"] == 1
        assert not attacker.poll(300), "the attacker must not receive the victim's reply"
        victim.close()
        attacker.close()


def test_a_session_without_a_token_ends_with_its_connection(cfg_engine, golden):
    z = golden["two_frames_cfg_sinusoidal"]
    ctx = zmq.Context.instance()
    with InferenceServer(cfg_engine, ServerConfig(port=0)) as srv:
        first = _socket(ctx, srv.address, zmq.DEALER, identity=b"raw")
        first.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "frame": z["image_0"], "seed": 0})])
        assert _drain(first, 1)[0]["status"] == "ok"
        first.close()
        _until(lambda: not srv.sessions)
        later = _socket(ctx, srv.address, zmq.DEALER, identity=b"raw")
        later.send_multipart([b"", protocol.encode({"v": 1, "type": "info"})])
        session = _drain(later, 1)[0]["info"]["session"]
        assert session["frames_in_history"] == 0 and session["predictions"] == 0
        later.close()


def test_queued_requests_of_a_closed_connection_are_dropped(engine, golden):
    z = golden["released_layout"]
    held = _HeldEngine.from_checkpoint(engine.checkpoint.path, device="cpu")
    ctx = zmq.Context.instance()
    with InferenceServer(held, ServerConfig(port=0, batch_wait_ms=20)) as srv:
        sock = _socket(ctx, srv.address, zmq.DEALER, identity=b"leaver")
        for i in range(3):
            sock.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "id": i, "frame": z["image_0"]})])
        _until(lambda: held.holding.is_set() and srv.stats.requests == 3)
        sock.close()
        _until(lambda: not srv.sessions)  # the server saw the connection close
        # The same routing id on a new connection resends request 1: a new session, so that request shares a
        # batch with the dead connection's request 1.
        again = _socket(ctx, srv.address, zmq.DEALER, identity=b"leaver")
        again.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "id": 1, "frame": z["image_0"]})])
        _until(lambda: srv.stats.requests == 4)
        held.release.set()
        [reply] = _drain(again, 1)
        assert reply["status"] == "ok" and reply["id"] == 1
        _until(srv._idle)
        assert srv.stats.snapshot()["predictions"] == 2  # the one already in the model, and the new one
        again.close()


def test_the_client_keeps_its_session_across_lazy_pirate_reconnects(cfg_engine, golden):
    z = golden["two_frames_cfg_sinusoidal"]
    held = _HeldEngine.from_checkpoint(cfg_engine.checkpoint.path, device="cpu")
    held.holding.set()  # hold a later batch instead of the first
    with InferenceServer(held, ServerConfig(port=0, cfg_scale=2.0, batch_wait_ms=1)) as srv:
        with ModelClient(srv.address, client_id=b"rig-7", timeout_s=0.5, retries=10) as client:
            client.predict(z["image_0"], noise=z["noise_1"])
            held.holding.clear()
            released = threading.Thread(
                target=lambda: (_until(lambda: srv.stats.requests >= 4), held.release.set()), daemon=True
            )
            released.start()  # once the retry has arrived on a fresh socket, let the model go on
            out = client.predict(z["image_1"], noise=z["noise_1"])
            released.join(30)
            session = client.info()["session"]
        assert len(srv.sessions) == 1
    assert session["frames_in_history"] == 2 and session["predictions"] >= 2
    assert np.isfinite(out.action_tensor).all()


def test_under_curve_a_session_belongs_to_its_key(cfg_engine, golden, tmp_path):
    from nitrogen.serving.keys import ClientCurve, generate_keys

    z = golden["two_frames_cfg_sinusoidal"]
    keys = generate_keys(tmp_path / "keys", clients=2)
    ctx = zmq.Context.instance()

    def curve_socket(index: int, identity: bytes) -> zmq.Socket:
        curve = ClientCurve.from_files(keys.client_secret[index], keys.server_public)
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.curve_publickey, sock.curve_secretkey = curve.client.public, curve.client.secret
        sock.curve_serverkey = curve.server_public
        sock.connect(srv.address)
        return sock

    def ask(sock: zmq.Socket, message: dict) -> dict:
        sock.send_multipart([b"", protocol.encode({"v": 1, **message})])
        return _drain(sock, 1)[0]

    with InferenceServer(cfg_engine, ServerConfig(port=0, curve_dir=tmp_path / "keys")) as srv:
        a = ClientCurve.from_files(keys.client_secret[0], keys.server_public)
        with ModelClient(srv.address, curve=a, client_id=b"victim", timeout_s=20) as victim:
            victim.predict(z["image_0"], seed=0)
            # Another allowed key with the victim's routing id: never delivered while the victim is connected.
            b = ClientCurve.from_files(keys.client_secret[1], keys.server_public)
            thief = ModelClient(srv.address, curve=b, client_id=b"victim", timeout_s=0.5, retries=1)
            with thief, pytest.raises(TimeoutError):
                thief.reset()
            # Another key presenting the victim's session token is refused.
            other = curve_socket(1, b"other")
            refused = ask(other, {"type": "reset", "token": victim._token})
            assert refused["status"] == "error" and "another client key" in refused["error"]
            assert victim.info()["session"]["frames_in_history"] == 1
            other.close()
        # A session keyed by routing id: another key claiming the id once it is free is refused ...
        raw = curve_socket(0, b"raw")
        assert ask(raw, {"type": "predict", "frame": z["image_0"], "seed": 0})["status"] == "ok"
        raw.close()
        _until(lambda: srv._connections._open == set())
        claim = curve_socket(1, b"raw")
        refused = ask(claim, {"type": "info"})
        assert refused["status"] == "error" and "another client key" in refused["error"]
        claim.close()
        _until(lambda: srv._connections._open == set())
        # ... and its own key finds it again after a reconnect.
        again = curve_socket(0, b"raw")
        assert ask(again, {"type": "info"})["info"]["session"]["frames_in_history"] == 1
        again.close()


def test_error_replies_are_short_and_never_quote_the_request(server, golden):
    sock = _socket(zmq.Context.instance(), server.address, zmq.DEALER, identity=b"quoter")
    marker = "zz-marker-zz"
    frame = {"__nd__": 1, "dtype": "uint8", "shape": [1, 1, 3], "data": b"\0\0\0"}
    cases = [
        {"v": marker, "type": "ping"},
        {"v": 1, "type": marker},
        {"v": 1, "type": "ping", "id": marker * 100},
        {"v": 1, "type": "info", "game": marker},
        {"v": 1, "type": "ping", "pad": marker * 10_000},
        {"v": 1, "type": "ping", "pad": [marker] * 10_000},
        {"v": 1, "type": "predict", "frame": {**frame, "dtype": marker}},
        {"v": 1, "type": "predict", "frame": {**frame, "shape": [marker]}},
        {"v": 1, "type": "predict", "frame": {**frame, "data": marker}},
        {"v": 1, "type": "predict", "frame": {**frame, "data": marker.encode() * 100_000}},
        {"v": 1, "type": "predict", "frame": golden["released_layout"]["image_0"], "noise": marker},
    ]
    for message in cases:
        sock.send(protocol.encode(message))
        assert sock.poll(10_000)
        raw = sock.recv()
        reply = protocol.decode(raw)
        assert reply["status"] == "error", message
        assert len(raw) < 1024 and marker.encode() not in raw, reply
    sock.close()


def test_the_size_cap_is_per_message_not_per_frame(engine):
    with InferenceServer(engine, ServerConfig(port=0, max_message_bytes=1_000_000)) as srv:
        sock = _socket(zmq.Context.instance(), srv.address, zmq.DEALER, identity=b"multi")
        ping = protocol.encode({"v": 1, "type": "ping", "id": 1})
        cases = [
            [b"", b"x" * 600_000, b"y" * 600_000, ping],  # each frame under the cap, the message over it
            [b""] * 20 + [ping],  # more frames than any envelope has
            [b"z" * 100_000, b"", ping],  # an envelope frame no routing id can be
        ]
        for frames in cases:
            sock.send_multipart(frames)
            assert sock.poll(10_000)
            reply_frames = sock.recv_multipart()
            assert sum(len(f) for f in reply_frames) < 1024
            reply = protocol.decode(reply_frames[-1])
            assert reply["status"] == "error" and ("refused" in reply["error"] or "envelope" in reply["error"])
        sock.send_multipart([b"", ping])
        assert _drain(sock, 1)[0]["status"] == "ok"
        sock.close()


def test_a_message_of_many_empty_containers_is_refused_not_built(server):
    sock = _socket(zmq.Context.instance(), server.address, zmq.DEALER, identity=b"nester")
    import msgpack

    payloads = [
        msgpack.packb({"v": 1, "type": "ping", "x": [[] for _ in range(3_000_000)]}),
        msgpack.packb({"v": 1, "type": "ping", "x": [[[] for _ in range(60)] for _ in range(60)]}),
        msgpack.packb({"v": 1, "type": "ping", "x": [{} for _ in range(60)] * 60}),
    ]
    for payload in payloads:
        sock.send_multipart([b"", payload])
    for reply in _drain(sock, len(payloads)):
        assert reply["status"] == "error" and "limits" in reply["error"] or "maps and lists" in reply["error"]
    sock.send_multipart([b"", protocol.encode({"v": 1, "type": "ping"})])
    assert _drain(sock, 1)[0]["status"] == "ok"
    sock.close()


def test_one_client_cannot_queue_unbounded_work(engine, golden):
    z = golden["released_layout"]
    held = _HeldEngine.from_checkpoint(engine.checkpoint.path, device="cpu")
    with InferenceServer(held, ServerConfig(port=0, batch_wait_ms=1)) as srv:
        greedy = _socket(zmq.Context.instance(), srv.address, zmq.DEALER, identity=b"greedy")
        for i in range(10):
            greedy.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "id": i, "frame": z["image_0"]})])
        refused = _drain(greedy, 6)  # answered at once, while the model is held
        assert all(r["status"] == "error" and "busy" in r["error"] for r in refused)
        limit = srv.config.max_client_queued
        assert limit == 4
        held.release.set()
        served = _drain(greedy, limit)
        assert [r["status"] for r in served] == ["ok"] * limit
        greedy.close()


def test_the_whole_queue_is_bounded_in_bytes(engine, golden):
    z = golden["released_layout"]
    held = _HeldEngine.from_checkpoint(engine.checkpoint.path, device="cpu")
    config = ServerConfig(port=0, batch_wait_ms=1, max_queued_bytes=1_000_000)
    size = len(protocol.encode({"v": 1, "type": "predict", "id": 0, "frame": z["image_0"]}))
    fits = config.max_queued_bytes // size
    with InferenceServer(held, config) as srv:
        ctx = zmq.Context.instance()
        clients = [_socket(ctx, srv.address, zmq.DEALER, identity=f"c{k}".encode()) for k in range(fits + 1)]
        for k, sock in enumerate(clients):
            sock.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "id": k, "frame": z["image_0"]})])
            _until(lambda k=k: srv.stats.requests == k + 1)  # in this order
        [busy] = _drain(clients[-1], 1)
        assert busy["status"] == "error" and "are queued" in busy["error"]
        assert srv._budget.held() == (fits, fits * size)
        held.release.set()
        assert all(_drain(sock, 1)[0]["status"] == "ok" for sock in clients[:-1])
        _until(lambda: srv._budget.held() == (0, 0))
        for sock in clients:
            sock.close()


def test_non_finite_results_never_come_back_as_ok(server, golden):
    z = golden["released_layout"]
    sock = _socket(zmq.Context.instance(), server.address, zmq.DEALER, identity=b"overflow")
    huge_noise = np.full((18, 25), 3e38, np.float32)
    cases = [
        ({"noise": huge_noise}, "noise values must be within"),
        ({"cfg_scale": 1e308}, "cfg_scale must be a finite number from -100 to 100"),
        ({"cfg_scale": -101.0}, "cfg_scale must be"),
    ]
    for fields, expected in cases:
        sock.send_multipart([b"", protocol.encode({"v": 1, "type": "predict", "frame": z["image_0"], **fields})])
        [reply] = _drain(sock, 1)
        assert reply["status"] == "error" and expected in reply["error"], reply
    sock.send_multipart([b"", protocol.encode({"v": 1, "type": "info"})])
    assert _drain(sock, 1)[0]["info"]["session"]["cfg_scale"] == 1.0  # nothing stuck
    # At the bounds the result is finite, or an error; never ok with NaN.
    edge = np.full((18, 25), 1e4, np.float32)
    sock.send_multipart(
        [b"", protocol.encode({"v": 1, "type": "predict", "frame": z["image_0"], "noise": edge, "cfg_scale": 100.0})]
    )
    [reply] = _drain(sock, 1)
    assert reply["status"] == "error" or np.isfinite(reply["pred"]["action_tensor"]).all()
    sock.close()
    with pytest.raises(ValueError, match="cfg_scale"):
        ServerConfig(cfg_scale=1e3)


def test_a_flood_of_new_identities_does_not_evict_an_active_session(cfg_engine, golden):
    z = golden["two_frames_cfg_sinusoidal"]
    ctx = zmq.Context.instance()
    with InferenceServer(cfg_engine, ServerConfig(port=0, max_sessions=8)) as srv, ModelClient(srv.address) as victim:
        victim.predict(z["image_0"], seed=0)
        flood = [_socket(ctx, srv.address, zmq.DEALER, identity=f"flood-{k}".encode()) for k in range(60)]
        for sock in flood:
            sock.send_multipart([b"", protocol.encode({"v": 1, "type": "info"})])
        replies = [_drain(sock, 1)[0] for sock in flood]
        assert sum(r["status"] == "ok" for r in replies) == 7
        assert all("active sessions" in r["error"] for r in replies if r["status"] == "error")
        assert victim.info()["session"]["frames_in_history"] == 1
        for sock in flood:
            sock.close()


def test_null_overrides_count_as_absent(server):
    sock = _socket(zmq.Context.instance(), server.address)
    reply = _request(sock, {"v": 1, "type": "info", "cfg_scale": None, "game": None})
    sock.close()
    assert reply["status"] == "ok" and reply["info"]["session"]["cfg_scale"] == 1.0  # not "internal error"


def test_info_names_the_checkpoint_but_never_its_path(server, golden_dir):
    sock = _socket(zmq.Context.instance(), server.address)
    sock.send(protocol.encode({"v": 1, "type": "info"}))
    assert sock.poll(10_000)
    raw = sock.recv()
    sock.close()
    assert str(golden_dir).encode() not in raw and b"released_layout.pt" not in raw
    info = protocol.decode(raw, limits=protocol.REPLY_LIMITS)["info"]
    assert info["name"] == "released_layout" and "checkpoint" not in info


# ----------------------------------------------------------------- memory, in a server child process

_SERVE_CHILD = """
import sys
from nitrogen.inference.engine import PolicyEngine
from nitrogen.serving.server import InferenceServer, ServerConfig

engine = PolicyEngine.from_checkpoint(sys.argv[1], device="cpu")
server = InferenceServer(engine, ServerConfig(port=0)).start()
print(server.address, flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop()
"""


def _raw_request(sock: zmq.Socket, message: dict) -> bytes:
    sock.send(protocol.encode(message))
    assert sock.poll(60_000), "no reply"
    return sock.recv()


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture()
def child_server(golden_dir):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_CHILD, str(golden_dir / "released_layout.pt")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://"), "the server child did not start"
        yield proc.pid, address
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_one_hostile_client_cannot_grow_the_server_by_a_gigabyte(child_server, golden):
    pid, address = child_server
    z = golden["released_layout"]
    ctx = zmq.Context.instance()
    good = _socket(ctx, address)
    ok = {"v": 1, "type": "predict", "frame": z["image_0"], "noise": z["noise_0"]}
    assert _request(good, ok)["status"] == "ok"
    idle_kb = _status_kb(pid, "VmRSS")
    hostile = _socket(ctx, address, zmq.DEALER, identity=b"hostile")  # never reads a reply
    big = protocol.encode({"v": 1, "type": "predict", "frame": np.zeros((3200, 3200, 3), np.uint8)})
    echo = [b"e" * 25_000_000, b"", protocol.encode({"v": 1, "type": "ping"})]  # a huge envelope to echo
    for _ in range(60):
        hostile.send(big, copy=False)
    for _ in range(40):
        hostile.send_multipart(echo, copy=False)
    # Until the server has read all of it (its stats count every message), the good client keeps asking.
    info = {"v": 1, "type": "info"}
    _until(
        lambda: (
            protocol.decode(_raw_request(good, info), limits=protocol.REPLY_LIMITS)["info"]["stats"]["requests"] >= 102
        ),
        300,
    )
    reply = _request(good, ok)
    assert reply["status"] == "ok"
    np.testing.assert_allclose(reply["pred"]["action_tensor"], z["action_tensor_0"], atol=1e-4)
    peak_kb = _status_kb(pid, "VmHWM")
    assert peak_kb - idle_kb < 1024 * 1024, f"idle {idle_kb} kB, peak {peak_kb} kB"
    hostile.close()
    good.close()


def test_an_rtc_request_equals_the_local_session_and_batches_with_plain_ones(engine, golden, golden_dir):
    z = golden["released_layout"]
    prefix = np.random.default_rng(9).random((14, 25)).astype(np.float32)
    local = InferenceSession.from_checkpoint(golden_dir / "released_layout.pt", device="cpu")
    want_rtc = local.predict(z["image_0"], noise=z["noise_0"], prefix=prefix, delay=4, chunking="rtc", beta=5.0)
    local.reset()
    want_plain = local.predict(z["image_1"], noise=z["noise_1"])
    requests = {
        "rtc": {"frame": z["image_0"], "noise": z["noise_0"], "prefix": prefix, "delay": 4, "chunking": "rtc"},
        "plain": {"frame": z["image_1"], "noise": z["noise_1"]},
    }
    replies: dict[str, dict] = {}
    barrier = threading.Barrier(2)
    with InferenceServer(engine, ServerConfig(port=0, batch_wait_ms=200, max_batch=8)) as srv:
        with ModelClient(srv.address, timeout_s=20) as client:
            assert client.spec.supports_rtc
            remote = client.predict(z["image_0"], noise=z["noise_0"], prefix=prefix, delay=4, chunking="rtc")
        np.testing.assert_allclose(remote.action_tensor, want_rtc.action_tensor, atol=1e-5)

        def run(name: str) -> None:
            sock = _socket(zmq.Context.instance(), srv.address)
            barrier.wait()
            replies[name] = _request(sock, {"v": 1, "type": "predict", "id": name, **requests[name]})
            sock.close()

        threads = [threading.Thread(target=run, args=(name,)) for name in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert max(r["batch_size"] for r in replies.values()) > 1, "the RTC and plain requests were never batched"
    np.testing.assert_allclose(replies["rtc"]["pred"]["action_tensor"], want_rtc.action_tensor, atol=1e-5)
    np.testing.assert_array_equal(replies["rtc"]["pred"]["action_tensor"][:4], prefix[:4])
    np.testing.assert_allclose(replies["plain"]["pred"]["action_tensor"], want_plain.action_tensor, atol=1e-5)


def test_a_bad_prefix_gets_an_error_reply(server, golden):
    z = golden["released_layout"]
    with ModelClient(server.address, timeout_s=20) as client:
        with pytest.raises(ServerError, match="prefix must have shape"):
            client.predict(z["image_0"], prefix=np.zeros((30, 25), np.float32))
        with pytest.raises(ServerError, match="delay"):
            client.predict(z["image_0"], prefix=np.zeros((5, 25), np.float32), delay=6)
        assert client.predict(z["image_0"]).action_tensor.shape == (18, 25)
