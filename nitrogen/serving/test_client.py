"""The light client against a fake server on real ZeroMQ sockets (loopback, free ports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.auth.thread

from nitrogen.actions import unpack_actions
from nitrogen.inference.preprocessing import MAX_FRAME_SIDE
from nitrogen.policy import ActionChunk, Policy, PolicySpec
from nitrogen.serving.client import ModelClient, ServerError
from nitrogen.serving.keys import ClientCurve, CurveKeys, generate_keys, load_keypair
from nitrogen.serving.protocol import decode, encode

REPO = Path(__file__).resolve().parents[2]
HORIZON = 18

Reply = dict[str, Any] | bytes
Handler = Callable[[dict[str, Any], int], "Reply | list[Reply] | None"]
"""Gets each decoded request and its 0-based arrival number; returns what to send back (None: nothing)."""


def ok_reply(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"v": 1, "status": "ok", "id": request.get("id"), "server_ms": 1.0, "queue_ms": 0.1, **fields}


def make_tensor(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((HORIZON, 25), dtype=np.float32)


def default_handler(request: dict[str, Any], _: int) -> Reply:
    kind = request.get("type")
    if kind == "predict":
        return ok_reply(request, pred={"action_tensor": make_tensor()})
    if kind == "info":
        return ok_reply(request, info={"model": "fake", "horizon": HORIZON})
    return ok_reply(request)


class FakeServer:
    """A ROUTER on a free loopback port, answering in a background thread with ``handler``."""

    def __init__(
        self, handler: Handler = default_handler, *, curve: CurveKeys | None = None, allow_dir: Path | None = None
    ) -> None:
        self.handler = handler
        self.received: list[tuple[bytes, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        self.context = zmq.Context()
        self.auth: zmq.auth.thread.ThreadAuthenticator | None = None
        if allow_dir is not None:
            self.auth = zmq.auth.thread.ThreadAuthenticator(self.context)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(allow_dir))
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if curve is not None:
            self.router.curve_server = True
            self.router.curve_publickey = curve.public
            self.router.curve_secretkey = curve.secret
        self.router.bind("tcp://127.0.0.1:*")
        self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.router.poll(20):
                continue
            *envelope, payload = self.router.recv_multipart()
            request = decode(payload)
            with self.arrived:
                count = len(self.received)
                self.received.append((envelope[0], request))
                self.arrived.notify_all()
            replies = self.handler(request, count)
            if replies is None:
                continue
            for reply in replies if isinstance(replies, list) else [replies]:
                body = reply if isinstance(reply, bytes) else encode(reply)
                self.router.send_multipart([*envelope, body])

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[tuple[bytes, dict[str, Any]]]:
        """Block until ``count`` requests have arrived (or fail)."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout_s), (
                f"only {len(self.received)} of {count} requests arrived"
            )
            return list(self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.context.term()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler = default_handler, **kwargs: Any) -> FakeServer:
        servers.append(FakeServer(handler, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(64, 48, 3), dtype=np.uint8)


def test_predict_round_trip(serve: Callable[..., FakeServer], frame: np.ndarray) -> None:
    server = serve()
    with ModelClient(server.address, timeout_s=5) as client:
        assert isinstance(client, Policy)
        chunk = client.predict(frame)
    assert isinstance(chunk, ActionChunk)
    sent = make_tensor()
    j_left, j_right, buttons = unpack_actions(sent)
    np.testing.assert_array_equal(chunk.action_tensor, sent)
    np.testing.assert_array_equal(chunk.buttons, buttons)
    np.testing.assert_array_equal(chunk.j_left, j_left)
    np.testing.assert_array_equal(chunk.j_right, j_right)
    assert chunk.horizon == HORIZON
    assert chunk.timing_ms["server_ms"] == 1.0 and chunk.timing_ms["queue_ms"] == 0.1
    assert chunk.timing_ms["roundtrip_ms"] > 0
    [(_, request)] = server.received
    assert request["v"] == 1 and request["type"] == "predict" and isinstance(request["id"], int)
    assert request["frame"].dtype == np.uint8 and request["frame"].shape == frame.shape
    assert request["frame"].tobytes() == frame.tobytes()
    assert "noise" not in request and "seed" not in request


def test_predict_sends_noise_and_seed(serve: Callable[..., FakeServer], frame: np.ndarray) -> None:
    server = serve()
    noise = np.random.default_rng(2).standard_normal((HORIZON, 25)).astype(np.float64)
    with ModelClient(server.address, timeout_s=5) as client:
        client.predict(frame[::2, ::2], noise=noise, seed=7)  # a non-contiguous view travels too
    [(_, request)] = server.received
    np.testing.assert_array_equal(request["frame"], frame[::2, ::2])
    assert request["noise"].dtype == np.float32
    np.testing.assert_array_equal(request["noise"], noise.astype(np.float32))
    assert request["seed"] == 7


def test_predict_accepts_pil_like_images(serve: Callable[..., FakeServer], frame: np.ndarray) -> None:
    class FakeImage:
        def __init__(self, rgba: np.ndarray) -> None:
            self.rgba = rgba
            self.mode = "RGBA"

        def convert(self, mode: str) -> np.ndarray:
            assert mode == "RGB"
            return self.rgba[..., :3]

    server = serve()
    rgba = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    with ModelClient(server.address, timeout_s=5) as client:
        client.predict(FakeImage(rgba))
    np.testing.assert_array_equal(server.received[0][1]["frame"], frame)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
def test_invalid_frames_are_refused_locally(serve: Callable[..., FakeServer], bad: np.ndarray) -> None:
    server = serve()
    with ModelClient(server.address, timeout_s=5) as client:
        with pytest.raises(ValueError, match="frame"):
            client.predict(bad)
        with pytest.raises(ValueError, match="seed"):
            client.predict(np.zeros((8, 8, 3), np.uint8), seed=-1)
        client.ping()  # the socket is still usable
    assert [r["type"] for _, r in server.received] == ["ping"]


def test_lazy_pirate_retries_on_a_fresh_socket_with_the_same_routing_id(
    serve: Callable[..., FakeServer], frame: np.ndarray
) -> None:
    server = serve(lambda request, n: None if n == 0 else default_handler(request, n))
    with ModelClient(server.address, timeout_s=0.3, retries=3) as client:
        chunk = client.predict(frame)
        client.ping()
    assert chunk.horizon == HORIZON
    identities = [identity for identity, _ in server.received]
    assert identities == [client.client_id] * 3
    assert client.client_id.startswith(b"nitrogen-")
    first, retry, ping = (request for _, request in server.received)
    assert first["id"] == retry["id"] != ping["id"]
    assert first["frame"].tobytes() == retry["frame"].tobytes() == frame.tobytes()


def test_every_request_carries_the_clients_own_session_token(
    serve: Callable[..., FakeServer], frame: np.ndarray
) -> None:
    server = serve(lambda request, n: None if n == 1 else default_handler(request, n))
    with ModelClient(server.address, timeout_s=0.3, retries=2) as client, ModelClient(server.address) as other:
        client.ping()
        client.predict(frame)  # its first attempt is not answered: the retry comes on a fresh socket
        client.reset()
        other.ping()
    tokens = [request["token"] for _, request in server.received]
    assert len(tokens) == 5 and len(set(tokens[:4])) == 1 and tokens[4] != tokens[0]
    assert all(isinstance(t, bytes) and len(t) == 16 for t in tokens)
    assert tokens[0] not in repr(client).encode()


def test_explicit_client_id_is_used(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    with ModelClient(server.address, timeout_s=5, client_id=b"rig-7") as client:
        client.reset()
    assert server.received == [(b"rig-7", server.received[0][1])]
    assert server.received[0][1]["type"] == "reset"


def test_no_reply_raises_timeout_after_all_attempts(serve: Callable[..., FakeServer], frame: np.ndarray) -> None:
    server = serve(lambda request, n: None)
    timeout_s, retries = 0.2, 2
    with ModelClient(server.address, timeout_s=timeout_s, retries=retries) as client:
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match=r"no reply from tcp://127\.0\.0\.1:\d+ .*0\.2 s.*2 attempts"):
            client.predict(frame)
        elapsed = time.perf_counter() - start
    assert timeout_s * retries * 0.9 <= elapsed < timeout_s * retries + 2.0
    assert len(server.wait_for(retries)) == retries


def test_stale_replies_are_skipped(serve: Callable[..., FakeServer], frame: np.ndarray) -> None:
    def handler(request: dict[str, Any], n: int) -> list[Reply]:
        stale = ok_reply(request, pred={"action_tensor": make_tensor(99)})
        stale["id"] = request["id"] - 1
        return [stale, default_handler(request, n)]

    server = serve(handler)
    with ModelClient(server.address, timeout_s=5) as client:
        chunk = client.predict(frame)
    np.testing.assert_array_equal(chunk.action_tensor, make_tensor())


def test_error_reply_raises_server_error(serve: Callable[..., FakeServer], frame: np.ndarray) -> None:
    server = serve(lambda request, n: {"v": 1, "status": "error", "id": request["id"], "error": "frame too large"})
    with ModelClient(server.address, timeout_s=5) as client:
        with pytest.raises(ServerError, match="frame too large"):
            client.predict(frame)
        with pytest.raises(ServerError, match="frame too large"):
            client.reset()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"\xc1 not msgpack", "undecodable reply"),
        (encode({"v": 1, "status": "ok", "id": 1}), "action_tensor"),
        (encode({"v": 1, "status": "maybe", "id": 1}), "malformed reply"),
        (
            encode({"v": 1, "status": "ok", "id": 1, "pred": {"action_tensor": np.zeros((4, 3), np.float32)}}),
            "invalid action tensor",
        ),
        (
            encode(
                {"v": 1, "status": "ok", "id": 1, "pred": {"action_tensor": np.full((HORIZON, 25), np.nan, np.float32)}}
            ),
            "not finite",
        ),
        (
            encode(
                {"v": 1, "status": "ok", "id": 1, "pred": {"action_tensor": np.full((HORIZON, 25), np.inf, np.float16)}}
            ),
            "not finite",
        ),
    ],
)
def test_bad_replies_raise_server_error(
    serve: Callable[..., FakeServer], frame: np.ndarray, reply: bytes, message: str
) -> None:
    server = serve(lambda request, n: reply)
    with ModelClient(server.address, timeout_s=5) as client, pytest.raises(ServerError, match=message):
        client.predict(frame)


def test_ping_info_and_close(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    client = ModelClient(server.address, timeout_s=5)
    with client:
        assert client.ping() > 0
        assert client.info() == {"model": "fake", "horizon": HORIZON}
        assert "open" in repr(client) and server.address in repr(client)
    assert client.closed and "closed" in repr(client)
    client.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()
    assert [r["type"] for _, r in server.received] == ["ping", "info"]


def test_constructor_validates_arguments() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        ModelClient(timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        ModelClient(retries=0)
    with pytest.raises(ValueError, match="client_id"):
        ModelClient(client_id=b"\x00bad")


def test_client_imports_without_torch() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, json, sys

        attempts = []

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    attempts.append(name)
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        from nitrogen.serving.client import ModelClient

        import numpy as np
        from nitrogen.inference.preprocessing import as_rgb_frame

        as_rgb_frame(np.zeros((2, 2, 3), np.uint8))
        client = ModelClient("tcp://127.0.0.1:1", timeout_s=0.1, retries=1)
        repr(client)
        try:
            client.predict(np.zeros((4, 4, 3), np.uint8))  # checks and encodes the frame, then times out
        except TimeoutError:
            pass
        client.close()
        heavy = sorted(n for n in sys.modules if n.split(".")[0] in {"torch", "cv2", "PIL"})
        print(json.dumps({"attempts": attempts, "heavy": heavy}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"the light client loaded {result['heavy']} (tried torch: {result['attempts']})"


def test_curve_allows_known_clients_and_ignores_unknown_ones(serve: Callable[..., FakeServer], tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    server = serve(curve=load_keypair(keys.server_secret), allow_dir=keys.clients_dir)
    known = ClientCurve.from_files(keys.client_secret[0], keys.server_public)
    with ModelClient(server.address, timeout_s=5, curve=known) as client:
        assert client.ping() > 0
        assert "curve=on" in repr(client)

    stranger = generate_keys(tmp_path / "stranger")
    unknown = ClientCurve.from_files(stranger.client_secret[0], keys.server_public)
    with (
        ModelClient(server.address, timeout_s=0.3, retries=1, curve=unknown) as client,
        pytest.raises(TimeoutError, match="allow-list"),
    ):
        client.ping()
    assert len(server.received) == 1


def spec_handler(request: dict[str, Any], n: int) -> Reply:
    if request.get("type") == "info":
        info = {
            "name": "fake",
            "action_horizon": HORIZON,
            "action_shift": 1,
            "image_size": 224,
            "step_rate_hz": 60.0,
            "buttons": list(PolicySpec().buttons),
            "games": {"": 0, "alpha": 1},
        }
        return ok_reply(request, info=info)
    return default_handler(request, n)


def test_spec_is_fetched_once_and_reset_keeps_it(serve: Callable[..., FakeServer]) -> None:
    server = serve(spec_handler)
    with ModelClient(server.address, timeout_s=5) as client:
        assert isinstance(client, Policy)  # looks the property up without calling it
        client.ping()
        spec = client.spec
        client.reset()
        assert client.spec is spec
    assert spec == PolicySpec(
        name="fake", action_horizon=HORIZON, action_shift=1, image_size=224, game_mapping={"": 0, "alpha": 1}
    )
    assert [r["type"] for _, r in server.received] == ["ping", "info", "reset"]


def test_an_info_that_describes_no_policy_raises_server_error(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    with ModelClient(server.address, timeout_s=5) as client, pytest.raises(ServerError, match="action_horizon"):
        _ = client.spec


def test_frames_over_the_one_limit_are_refused_locally(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    with ModelClient(server.address, timeout_s=5) as client:
        with pytest.raises(ValueError, match=f"{MAX_FRAME_SIDE}-pixel limit"):
            client.predict(np.zeros((1, MAX_FRAME_SIDE + 1, 3), np.uint8))
        client.predict(np.zeros((1, MAX_FRAME_SIDE, 3), np.uint8))
    assert [r["frame"].shape for _, r in server.received] == [(1, MAX_FRAME_SIDE, 3)]
