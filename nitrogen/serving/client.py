"""The light client: ask a remote NitroGen server for actions, without torch on this machine.

Imports only numpy, pyzmq, msgpack, pydantic and the light ``nitrogen`` modules (protocol, policy,
keys, and the torch-free frame check of :mod:`nitrogen.inference.preprocessing`)::

    with ModelClient("tcp://gpu-box:5555") as policy:
        policy.spec.image_size                 # what the server's model is, from one info request
        chunk = policy.predict(frame)          # uint8 (H, W, 3) RGB, or a PIL image
        chunk.buttons, chunk.j_left, chunk.timing_ms["roundtrip_ms"]

A frame is checked here, once, before it is sent (the server's engine checks it again on its side);
the reply's ``pred.action_tensor`` is decoded with :meth:`ActionChunk.from_action_tensor`.

Requests are retried with the "lazy pirate" pattern: wait ``timeout_s`` for a reply, then drop the
socket, open a fresh one after a short pause and send again, ``retries`` times in all. Every socket
keeps one routing id (``client_id``) for the client's whole life. The client's session on the
server (its frame history, game and CFG scale) follows a secret ``token`` of 16 random bytes that
the client makes once and sends with every request, so it survives those reconnects, while no
other socket, even one that presents the same routing id, can read, reset or steer it. The pause
lets the server see the old connection close: a server that keeps ``ZMQ_ROUTER_HANDOVER`` off
never delivers a second connection's messages while the first holds the routing id.

A reply is checked before it is returned: an error reply, a malformed one, or an action tensor
that is not finite (NaN or infinite) raises :class:`ServerError`.

The socket is a DEALER that frames each message exactly as a REQ socket does (an empty delimiter
frame, then the payload), so servers see ordinary REQ traffic; unlike REQ it can skip a late reply
to an earlier attempt (matched by the request ``id``) and keep waiting for the right one.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq

from ..inference.preprocessing import as_rgb_frame
from ..policy import ActionChunk, PolicySpec
from .keys import ClientCurve
from .protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, REPLY_LIMITS, ProtocolError, decode, encode

__all__ = ["DEFAULT_ADDRESS", "ModelClient", "ServerError"]

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
_RECONNECT_PAUSE_S = 0.05
"""How long a retry waits between closing its old socket and connecting a fresh one."""


class ServerError(RuntimeError):
    """The server answered with an error, or with something that is not a valid reply."""


class ModelClient:
    """A :class:`~nitrogen.policy.Policy` served by a remote ``nitrogen`` model server.

    Not thread-safe to share between concurrent callers beyond what its internal lock gives:
    requests from several threads are serialised, one at a time.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        curve: ClientCurve | None = None,
        client_id: bytes | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise ValueError(f"retries must be an integer >= 1, got {retries!r}")
        if client_id is None:
            client_id = b"nitrogen-" + uuid.uuid4().hex.encode()
        if not isinstance(client_id, bytes) or not 1 <= len(client_id) <= 255 or client_id[0] == 0:
            raise ValueError("client_id must be 1..255 bytes not starting with a zero byte")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.client_id = client_id
        self._token = secrets.token_bytes(16)  # the session's secret: never shown, never logged
        self._curve = curve
        self._spec: PolicySpec | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        self._context: zmq.Context[zmq.Socket[bytes]] | None = zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None
        try:
            self._open_socket()
        except BaseException:
            self._context.term()
            self._context = None
            raise

    # -- Policy interface ------------------------------------------------------------------------

    def predict(
        self,
        frame: Any,
        *,
        noise: Any = None,
        seed: int | None = None,
        prefix: Any = None,
        delay: int | None = None,
        chunking: str = "rtc",
        beta: float | None = None,
    ) -> ActionChunk:
        """The next action chunk for ``frame`` (uint8 ``H x W x 3`` RGB array, or a PIL image).

        ``noise`` (float32 ``(H, 25)``) or ``seed`` make the server's sampling reproducible.
        ``prefix``, ``delay``, ``chunking`` and ``beta`` are real-time chunking's inputs, as in
        :meth:`nitrogen.inference.session.InferenceSession.predict`.
        ``timing_ms`` of the result holds ``server_ms``, ``queue_ms`` and ``roundtrip_ms``.
        """
        fields: dict[str, Any] = {"frame": as_rgb_frame(frame)}
        if noise is not None:
            fields["noise"] = _as_noise(noise)
        if prefix is not None:
            fields["prefix"] = np.asarray(prefix, dtype=np.float32)
            fields["chunking"] = str(chunking)
            if delay is not None:
                fields["delay"] = int(delay)
            if beta is not None:
                fields["beta"] = float(beta)
        elif delay is not None:
            raise ValueError("a delay was given without a prefix")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
                raise ValueError(f"seed must be a non-negative integer below 2**63, got {seed!r}")
            fields["seed"] = int(seed)
        reply, roundtrip_ms = self._request("predict", fields)
        pred = reply.get("pred")
        tensor = pred.get("action_tensor") if isinstance(pred, dict) else None
        if not isinstance(tensor, np.ndarray):
            raise ServerError("the server's predict reply has no 'pred.action_tensor' array")
        if tensor.dtype.kind not in "biuf" or not np.isfinite(tensor).all():
            raise ServerError("the server sent an action tensor that is not finite numbers (NaN or infinite)")
        timing = {"roundtrip_ms": roundtrip_ms}
        for key in ("server_ms", "queue_ms"):
            value = reply.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                timing[key] = float(value)
        try:
            return ActionChunk.from_action_tensor(tensor, timing)
        except ValueError as exc:
            raise ServerError(f"the server sent an invalid action tensor: {exc}") from None

    def reset(self) -> None:
        """Make the server forget this client's frame history (start of an episode)."""
        self._request("reset", {})

    @property
    def spec(self) -> PolicySpec:
        """What the served model is (horizon, action shift, frame size, step rate, buttons, games).

        Built from the server's ``info`` reply on first access, with one request, then cached:
        :meth:`reset` keeps it. Raises :class:`ServerError` if the reply does not describe a policy.
        """
        if self._spec is None:
            info = self.info()
            try:
                self._spec = PolicySpec.from_info(info)
            except (KeyError, TypeError, ValueError) as exc:
                raise ServerError(f"the server's info does not describe a policy: {exc!r}") from None
        return self._spec

    def info(self) -> dict[str, Any]:
        """What the server runs: checkpoint, settings, action layout."""
        reply, _ = self._request("info", {})
        info = reply.get("info")
        if not isinstance(info, dict):
            raise ServerError("the server's info reply has no 'info' map")
        return info

    def ping(self) -> float:
        """One round trip to the server, in milliseconds."""
        _, roundtrip_ms = self._request("ping", {})
        return roundtrip_ms

    # -- lifetime ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._context is None

    def close(self) -> None:
        """Close the socket and terminate this client's ZeroMQ context; safe to call twice."""
        with self._lock:
            self._close_socket()
            if self._context is not None:
                self._context.term()
                self._context = None

    def __enter__(self) -> ModelClient:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"ModelClient(address={self.address!r}, client_id={self.client_id!r}, timeout_s={self.timeout_s}, "
            f"retries={self.retries}, curve={'on' if self._curve else 'off'}, {state})"
        )

    # -- transport ---------------------------------------------------------------------------------

    def _open_socket(self) -> None:
        assert self._context is not None
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self.client_id)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
            if self._curve is not None:
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self._curve.client.public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve.client.secret)
                sock.setsockopt(zmq.CURVE_SERVERKEY, self._curve.server_public)
            sock.connect(self.address)
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _request(self, kind: str, fields: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Send one request, retrying on timeout; return the reply and the round trip in ms."""
        with self._lock:
            if self._context is None:
                raise RuntimeError("this ModelClient is closed")
            self._next_id += 1
            request_id = self._next_id
            payload = encode({"v": PROTOCOL_VERSION, "type": kind, "id": request_id, "token": self._token, **fields})
            for attempt in range(self.retries):
                if attempt:  # lazy pirate: a fresh socket, same routing id, same request
                    self._close_socket()
                    time.sleep(_RECONNECT_PAUSE_S)
                    self._open_socket()
                assert self._socket is not None
                try:
                    self._socket.send_multipart([b"", payload], copy=False)
                except zmq.Again:  # nowhere to queue it (should not happen on a connecting socket)
                    continue
                sent = time.perf_counter()
                reply = self._await_reply(request_id, sent + self.timeout_s)
                if reply is not None:
                    roundtrip_ms = (time.perf_counter() - sent) * 1000.0
                    return _check_reply(reply), roundtrip_ms
            # The socket may hold a half-sent request; start clean for the next call.
            self._close_socket()
            time.sleep(_RECONNECT_PAUSE_S)
            self._open_socket()
        secure = " (CURVE is on: is this client's public key in the server's allow-list?)" if self._curve else ""
        raise TimeoutError(
            f"no reply from {self.address} to {kind!r} within {self.timeout_s:g} s, "
            f"after {self.retries} attempt{'s' if self.retries != 1 else ''}{secure}"
        )

    def _await_reply(self, request_id: int, deadline: float) -> dict[str, Any] | None:
        """The reply to ``request_id``, skipping stale ones; ``None`` once ``deadline`` passes."""
        assert self._socket is not None
        while True:
            remaining_ms = (deadline - time.perf_counter()) * 1000.0
            if remaining_ms <= 0 or not self._socket.poll(max(1, int(remaining_ms + 0.999)), zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart()
            try:
                reply = decode(frames[-1], MAX_MESSAGE_BYTES, REPLY_LIMITS)
            except ProtocolError as exc:
                raise ServerError(f"undecodable reply from {self.address}: {exc}") from None
            reply_id = reply.get("id")
            if reply_id is None or reply_id == request_id:
                return reply  # None: the server could not read the request, so could not echo its id
            # A late reply to an earlier request or attempt: drop it and keep waiting.


def _check_reply(reply: dict[str, Any]) -> dict[str, Any]:
    version = reply.get("v")
    if version is not None and version != PROTOCOL_VERSION:
        raise ServerError(f"the server speaks protocol version {version!r}; this client speaks {PROTOCOL_VERSION}")
    status = reply.get("status")
    if status == "error":
        raise ServerError(str(reply.get("error") or "the server reported an error without a message"))
    if status != "ok":
        raise ServerError(f"malformed reply: status {status!r}, expected 'ok' or 'error'")
    return reply


def _as_noise(noise: Any) -> np.ndarray:
    """Noise as float32; its shape is the server's to check, since it knows the model's horizon."""
    return np.asarray(noise, dtype=np.float32)
