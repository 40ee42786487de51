"""A safe, multi-client, batching ZeroMQ inference server.

One ROUTER socket; versioned msgpack messages (:mod:`nitrogen.serving.protocol`), never pickle (except the
opt-in legacy mode, through a restricted unpickler). Each client has its own session (a
:class:`~nitrogen.inference.history.FrameHistory`: frame history, game and CFG scale). ``predict``
requests from different clients that arrive within the batching window run as one batch through
:meth:`PolicyEngine.predict_batch`, the same path an in-process session takes.

Threads: the I/O thread owns the ROUTER socket; it checks each message's size and the client's
budget, decodes it (at a bounded cost: :class:`~nitrogen.serving.protocol.DecodeLimits`), checks it
at the wire level (:func:`protocol.validate_request`), answers ``ping``/``info``/``reset`` itself,
and queues ``predict`` requests. The worker thread takes batches from the queue, runs the engine
(which checks each frame, once, and refuses non-finite actions), and hands the replies back to the
I/O thread through an in-process socket, so only one thread ever touches the ROUTER. A predict reply
carries ``pred: {"action_tensor"}``; the legacy encoder derives what the original client reads from it.

Who owns a session:

* A request may carry ``token``, a secret of 16 to 64 random bytes that the client makes once
  (:class:`~nitrogen.serving.client.ModelClient` does). Its session is keyed by that token, so it
  follows the client across reconnects whatever connection or routing id the request comes on.
* A request without a token (a raw socket, the legacy client) has a session keyed by its ZeroMQ
  routing id and bound to the TCP connection that made it: it ends when that connection closes, and
  a later connection that presents the same routing id starts a fresh one.
* Under CURVE every session is also bound to the client's authenticated public key (the ZAP
  ``User-Id``). A request from another key for it, by token or by routing id, is refused with an
  error; a session keyed by routing id then survives its own key's reconnects.

``ZMQ_ROUTER_HANDOVER`` is off: with it on, any new connection that presents a routing id takes it
over at the transport level, before the server sees a byte, cutting the holder off and receiving
its in-flight replies. Off, libzmq keeps a routing id with the live connection that holds it and
never delivers what a second connection presenting the same id sends (that connection gets no
answer). Replies go only to the connection a request came from; a reply to a connection that has
closed is dropped, and so are the queued requests of a closed connection. Dead peers are found by
ZMTP heartbeats.

Bounded resources (defaults in :class:`ServerConfig`): a message over ``max_message_bytes``, all
its frames together, or with more than a few frames, is refused with a short error; every message
reserves its size against its client's and the whole server's queue budget (``max_client_queued``
/ ``max_client_queued_bytes`` and ``max_queued`` / ``max_queued_bytes``) before it is decoded, and
one over a budget is refused at once ("busy"). ZeroMQ buffers at most a few messages per
connection (``RCVHWM``) and a bounded number of replies per client (``SNDHWM``): what a client that
never reads cannot take is dropped. At ``max_sessions``, a newcomer evicts the least recently seen
session only if it has been idle for ``session_idle_s``; a session seen more recently is never
evicted, and the newcomer is refused. Error replies never quote what the client sent and stay
under 1 KB. The ``info`` reply names the checkpoint, never its path.

One limit is libzmq's: it delivers a message only once all its frames have arrived, so a single
multipart message is held whole in memory (each frame at most ``max_message_bytes``) before the
server can refuse it. Only CURVE keeps peers without an allowed key from sending anything at all.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from zmq.utils.monitor import parse_monitor_message

from ..inference.engine import FrameRequest, PolicyEngine
from ..inference.history import MAX_CFG_SCALE, FrameHistory
from . import protocol

log = logging.getLogger("nitrogen.serving.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerConfig(BaseModel):
    """Settings of :class:`InferenceServer`; the defaults are those of ``nitrogen serve``."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(5555, ge=0, le=65535, description="0 picks a free port")
    cfg_scale: float = Field(
        1.0, ge=-MAX_CFG_SCALE, le=MAX_CFG_SCALE, allow_inf_nan=False, description="default per session; 1.0 is off"
    )
    context_length: int | None = Field(None, ge=1, description="frames of history; default: the checkpoint's")
    game: str | int | None = None
    max_batch: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    max_sessions: int = Field(256, ge=1)
    session_ttl_s: float = Field(600.0, gt=0, description="a session not heard from for this long expires")
    session_idle_s: float = Field(
        60.0, gt=0, description="a session heard from within this is active: a newcomer never evicts it"
    )
    curve_dir: Path | None = Field(None, description="from `nitrogen keys generate`: server key + clients/ allow-list")
    insecure: bool = Field(False, description="allow a non-loopback host without CURVE (prints a warning)")
    legacy_pickle: bool = Field(False, description="accept the original client's pickled messages, restricted")
    stats_interval_s: float = Field(30.0, gt=0)
    max_message_bytes: int = Field(protocol.MAX_MESSAGE_BYTES, gt=0, description="one message, all its frames")
    max_queued: int = Field(64, ge=1, description="requests decoded or waiting for the model, all clients")
    max_queued_bytes: int = Field(256 * 1024 * 1024, gt=0, description="their message bytes, all clients")
    max_client_queued: int = Field(4, ge=1, description="requests of one client decoded or waiting")
    max_client_queued_bytes: int = Field(64 * 1024 * 1024, gt=0, description="their message bytes, one client")

    @model_validator(mode="after")
    def _safe_exposure(self) -> ServerConfig:
        if not is_loopback(self.host) and self.curve_dir is None and not self.insecure:
            raise ValueError(
                f"--host {self.host} exposes the server beyond this machine: give CURVE keys (--curve-dir, "
                "from `nitrogen keys generate`) or pass --insecure explicitly"
            )
        if self.legacy_pickle and not is_loopback(self.host) and self.curve_dir is None:
            raise ValueError("--legacy-pickle is refused together with a non-loopback --host unless CURVE is on")
        return self


SessionKey = bytes | tuple[str, bytes]
"""A session's key: the routing id (bytes) of a client without a token, or ``("token", token)``."""

_MAX_FRAMES = 8
"""Frames of one message: the routing id, a REQ envelope (a proxy adds a few) and the payload."""
_MAX_ENVELOPE_PART = 255
"""Bytes of one envelope frame (ZeroMQ routing ids are at most 255 bytes)."""
_RECV_HWM = 8
"""Messages ZeroMQ buffers per connection before it stops reading from it."""
_SEND_HWM = 64
"""Replies ZeroMQ buffers per client; more, for a client that does not read, are dropped."""
_HEARTBEAT_IVL_MS = 10_000
_HEARTBEAT_TIMEOUT_MS = 30_000
_MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class ClientSession(FrameHistory):
    """One client's state: its frame history and settings, who owns it, and when it was last heard from.

    ``conn`` is the connection it was last used from; ``user`` the CURVE public key that owns it
    (``None`` without CURVE).
    """

    def __init__(
        self,
        context_length: int,
        *,
        game_id: int | None,
        game_name: str | None,
        cfg_scale: float,
        conn: int = 0,
        user: str | None = None,
    ):
        super().__init__(context_length, game_id=game_id, game_name=game_name, cfg_scale=cfg_scale)
        self.last_seen = time.monotonic()
        self.conn = conn
        self.user = user


@dataclass(eq=False)  # compared by identity: a request holds arrays
class _Job:
    envelope: list[bytes]
    identity: bytes
    request: dict[str, Any]
    received: float
    legacy: bool
    session: ClientSession | None = None
    conn: int = 0
    ticket: tuple[bytes, int] | None = None
    done: bool = False


class _Budget:
    """The queue budget: requests and message bytes held (decoded or waiting for the model), per client
    and in all. A client with nothing held may always place one message, so no size is refused forever."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self._clients: dict[bytes, list[int]] = {}  # routing id -> [requests, bytes]

    def reserve(self, client: bytes, size: int) -> tuple[bytes, int] | str:
        """A ticket to :meth:`release` later, or the reason the message is refused."""
        cfg = self.config
        with self._lock:
            held = self._clients.get(client, [0, 0])
            if held[0] and (held[0] + 1 > cfg.max_client_queued or held[1] + size > cfg.max_client_queued_bytes):
                return (
                    f"busy: this client already has {held[0]} requests ({held[1]} bytes) queued; "
                    f"the limit is {cfg.max_client_queued} requests, {cfg.max_client_queued_bytes} bytes"
                )
            if self._count and (self._count + 1 > cfg.max_queued or self._bytes + size > cfg.max_queued_bytes):
                return (
                    f"busy: {self._count} requests ({self._bytes} bytes) are queued; the limit is "
                    f"{cfg.max_queued} requests, {cfg.max_queued_bytes} bytes; try again shortly"
                )
            self._clients[client] = [held[0] + 1, held[1] + size]
            self._count += 1
            self._bytes += size
            return (client, size)

    def release(self, ticket: tuple[bytes, int] | None) -> None:
        if ticket is None:
            return
        client, size = ticket
        with self._lock:
            held = self._clients[client]
            held[0] -= 1
            held[1] -= size
            if not held[0]:
                del self._clients[client]
            self._count -= 1
            self._bytes -= size

    def held(self) -> tuple[int, int]:
        with self._lock:
            return self._count, self._bytes


class _Connections:
    """Which TCP connection a message came from, and whether it is still open.

    A message names its socket (``ZMQ_SRCFD``); the socket monitor reports each accepted and each
    closed connection, in order, before any message of a later connection on a reused descriptor
    can be read. A connection is a number that is never reused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_fd: dict[int, int] = {}
        self._open: set[int] = set()
        self._next = 0

    def _new(self, fd: int) -> int:
        self._next += 1
        self._open.discard(self._by_fd.get(fd, 0))
        self._by_fd[fd] = self._next
        self._open.add(self._next)
        return self._next

    def accepted(self, fd: int) -> None:
        with self._lock:
            self._new(fd)

    def closed(self, fd: int) -> int | None:
        with self._lock:
            conn = self._by_fd.pop(fd, None)
            self._open.discard(conn or 0)
            return conn

    def of(self, fd: int) -> int:
        with self._lock:
            conn = self._by_fd.get(fd)
            return conn if conn is not None else self._new(fd)

    def is_open(self, conn: int) -> bool:
        with self._lock:
            return conn in self._open


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.predictions = 0
        self.errors = 0
        self.batches: deque[int] = deque(maxlen=10_000)
        self.latency_ms: deque[float] = deque(maxlen=10_000)
        self.lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
            batches = np.asarray(self.batches) if self.batches else np.zeros(1)
            return {
                "requests": self.requests,
                "predictions": self.predictions,
                "errors": self.errors,
                "batches": len(self.batches),
                "mean_batch": float(batches.mean()),
                "max_batch": int(batches.max()),
                "p50_ms": float(np.percentile(lat, 50)),
                "p95_ms": float(np.percentile(lat, 95)),
            }


class InferenceServer:
    """Serves a :class:`PolicyEngine` to many clients. Use :meth:`start`/:meth:`stop` or ``with``."""

    def __init__(self, engine: PolicyEngine, config: ServerConfig | None = None):
        self.engine = engine
        self.config = config or ServerConfig()
        self.default_game = engine.resolve_game(self.config.game)
        self.context_length = engine.check_context_length(
            self.config.context_length or engine.config.modality_cfg.frame_per_sample
        )
        self.sessions: OrderedDict[SessionKey, ClientSession] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._backlog: deque[_Job] = deque()  # deferred jobs, only touched by the worker
        self._budget = _Budget(self.config)
        self._connections = _Connections()
        self._ctx = zmq.Context()
        self._auth: Any = None
        self._router: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.stats = _Stats()
        self.address: str | None = None
        self._reply_addr = f"inproc://nitrogen-replies-{id(self)}"
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------ lifecycle

    def _configure(self, sock: zmq.Socket) -> None:
        """Socket options that bound what ZeroMQ holds, and the monitor that reports connections."""
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0)  # a routing id stays with its live connection (module docstring)
        sock.setsockopt(zmq.RCVHWM, _RECV_HWM)
        sock.setsockopt(zmq.SNDHWM, _SEND_HWM)
        sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
        self._router = sock
        self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)

    def _bind(self) -> zmq.Socket:
        cfg = self.config
        allowed = keys = None
        if cfg.curve_dir is not None:  # read once, before any socket opens; raises naming a bad file
            from .keys import CLIENTS_DIR, load_allow_list

            allowed = load_allow_list(cfg.curve_dir / CLIENTS_DIR)
            from .keys import load_keypair

            keys = load_keypair(cfg.curve_dir / "server.key_secret")  # a bad key fails before any socket
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            return self._setup(sock, allowed, keys)
        except BaseException:
            sock.close(linger=0)  # a refused start leaves no socket behind
            raise

    def _setup(self, sock: zmq.Socket, allowed: Any, keys: Any) -> zmq.Socket:
        cfg = self.config
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        self._configure(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if cfg.curve_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve_callback(domain="*", credentials_provider=allowed)
            sock.curve_server = True
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        if cfg.port == 0:
            sock.bind(f"tcp://{host}:*")
        else:
            sock.bind(f"tcp://{host}:{cfg.port}")
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def start(self) -> InferenceServer:
        """Bind and start serving in background threads; returns once the socket is bound."""
        if not is_loopback(self.config.host) and self.config.curve_dir is None:
            log.warning("serving on %s WITHOUT authentication or encryption (--insecure)", self.config.host)
        errors: list[BaseException] = []

        def io_main() -> None:
            try:
                self._io_loop()
            except BaseException as exc:  # surfaced to start() if binding failed
                errors.append(exc)
                self._ready.set()
                raise

        self._threads = [
            threading.Thread(target=io_main, name="nitrogen-io", daemon=True),
            threading.Thread(target=self._worker_loop, name="nitrogen-worker", daemon=True),
        ]
        self._threads[0].start()
        self._ready.wait()
        if errors:
            raise errors[0]
        self._threads[1].start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, answer those in flight, then close."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        self._stopped.set()

    def wait(self) -> None:
        """Block until :meth:`stop` has finished (from a signal handler or another thread)."""
        while not self._stopped.wait(0.5):
            pass

    def __enter__(self) -> InferenceServer:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- sessions

    def _session(self, key: SessionKey, conn: int, user: str | None) -> ClientSession:
        """The caller's session, created on first use (see the module docstring for who owns one).

        At capacity the least recently seen session goes if it has been idle for ``session_idle_s``;
        otherwise the newcomer is refused. Raises :class:`~nitrogen.serving.protocol.ProtocolError`.
        """
        cfg = self.config
        now = time.monotonic()
        with self._sessions_lock:
            session = self.sessions.get(key)
            if session is not None and session.user != user:
                raise protocol.ProtocolError("this session belongs to another client key")
            if session is not None and session.conn != conn and isinstance(key, bytes) and user is None:
                # A routing id is held by one live connection: this is a new connection, so a new session.
                del self.sessions[key]
                session = None
            if session is None:
                if len(self.sessions) >= cfg.max_sessions:
                    oldest_key, oldest = next(iter(self.sessions.items()))
                    if now - oldest.last_seen < cfg.session_idle_s:
                        raise protocol.ProtocolError(
                            f"busy: the server holds {len(self.sessions)} active sessions, its limit; try again later"
                        )
                    del self.sessions[oldest_key]
                    log.info("evicted an idle session (at %d sessions)", cfg.max_sessions)
                game_id, game_name = self.default_game
                session = ClientSession(
                    self.context_length,
                    game_id=game_id,
                    game_name=game_name,
                    cfg_scale=cfg.cfg_scale,
                    conn=conn,
                    user=user,
                )
                self.sessions[key] = session
            self.sessions.move_to_end(key)
            session.conn = conn
            session.last_seen = now
            return session

    def _expire_sessions(self) -> None:
        deadline = time.monotonic() - self.config.session_ttl_s
        with self._sessions_lock:
            for key in [k for k, s in self.sessions.items() if s.last_seen < deadline]:
                del self.sessions[key]

    def _connection_closed(self, conn: int) -> None:
        """End the sessions that belong to this connection alone (keyed by routing id, without CURVE)."""
        with self._sessions_lock:
            for key in [
                k for k, s in self.sessions.items() if isinstance(k, bytes) and s.user is None and s.conn == conn
            ]:
                del self.sessions[key]

    def _apply_overrides(self, session: ClientSession, request: dict[str, Any]) -> None:
        """Set the session's game and CFG scale from the request, both checked before either is set."""
        game = session.game_id, session.game_name
        if "game" in request:
            try:
                game = self.engine.resolve_game(request["game"])
            except ValueError:
                known = "this checkpoint has no game mapping" if not self.engine.game_mapping else "`info` lists them"
                raise protocol.ProtocolError(f"unknown game ({protocol.describe(request['game'])}); {known}") from None
        cfg_scale = session.cfg_scale
        if request.get("cfg_scale") is not None:
            cfg_scale = FrameHistory.check_cfg_scale(request["cfg_scale"])
        session.game_id, session.game_name = game
        session.cfg_scale = cfg_scale

    def info(self, session: ClientSession | None = None) -> dict[str, Any]:
        info = {
            **{k: v for k, v in self.engine.info().items() if k != "checkpoint"},  # its name, never its path
            "context_length": self.context_length,
            "cfg_scale": self.config.cfg_scale,
            "game": self.default_game[1],
            "max_batch": self.config.max_batch,
            "batch_wait_ms": self.config.batch_wait_ms,
            "sessions": len(self.sessions),
            "stats": self.stats.snapshot(),
            "protocol_version": protocol.PROTOCOL_VERSION,
            "ckpt_config": self.engine.config.to_dict(),
        }
        if session is not None:
            info["session"] = {
                "game": session.game_name,
                "cfg_scale": session.cfg_scale,
                "frames_in_history": len(session),
                "predictions": session.predictions,
            }
        return info

    # ------------------------------------------------------------------------------------ I/O

    def _io_loop(self) -> None:
        try:
            router = self._bind()
        except BaseException:
            self._close_router()
            raise
        replies = self._ctx.socket(zmq.PULL)
        replies.bind(self._reply_addr)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        assert self._monitor is not None
        poller.register(self._monitor, zmq.POLLIN)
        next_stats = next_expiry = time.monotonic()
        try:
            while True:
                events = dict(poller.poll(50))
                self._drain_monitor()
                if replies in events:
                    while replies.poll(0):
                        self._forward_reply(router, replies.recv_multipart())
                if router in events and not self._stopping.is_set():
                    for _ in range(256):  # drain what is ready, then look at replies again
                        if not router.poll(0):
                            break
                        frames = router.recv_multipart(copy=False)
                        self._drain_monitor()  # connection events that happened before this message
                        self._on_message(router, frames)
                        del frames
                now = time.monotonic()
                if now >= next_expiry:
                    self._expire_sessions()
                    next_expiry = now + 1.0
                if now >= next_stats:
                    if self.stats.requests:
                        s = self.stats.snapshot()
                        log.info(
                            "requests=%d predictions=%d errors=%d sessions=%d batches=%d mean_batch=%.2f "
                            "max_batch=%d p50=%.1fms p95=%.1fms",
                            s["requests"], s["predictions"], s["errors"], len(self.sessions), s["batches"],
                            s["mean_batch"], s["max_batch"], s["p50_ms"], s["p95_ms"],
                        )  # fmt: skip
                    next_stats = now + self.config.stats_interval_s
                if self._stopping.is_set() and self._idle():
                    while replies.poll(100):  # the last replies of the batch in flight
                        self._forward_reply(router, replies.recv_multipart())
                    break
        finally:
            self._close_router()
            replies.close(linger=0)

    def _close_router(self) -> None:
        if self._router is not None:
            if self._monitor is not None:
                self._router.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._router.close(linger=1000)
            self._router = None

    def _drain_monitor(self) -> None:
        """Apply the connection events the monitor has reported so far."""
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            event = parse_monitor_message(monitor.recv_multipart())
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._connections.accepted(fd)
            else:
                conn = self._connections.closed(fd)
                if conn is not None:
                    self._connection_closed(conn)

    def _idle(self) -> bool:
        with self._inflight_lock:
            return self._inflight == 0 and self._jobs.empty()

    def _forward_reply(self, router: zmq.Socket, frames: list[bytes]) -> None:
        """Send a worker's reply ``[connection, *envelope, body]``, if that connection is still open."""
        if self._connections.is_open(int.from_bytes(frames[0], "little")):
            router.send_multipart(frames[1:])

    def _send(self, router: zmq.Socket, conn: int, envelope: list[bytes], reply: dict[str, Any], legacy: bool) -> None:
        if self._connections.is_open(conn):
            router.send_multipart([*envelope, self._encode_reply(reply, legacy)])

    def _encode_reply(self, reply: dict[str, Any], legacy: bool) -> bytes:
        if not legacy:
            return protocol.encode(reply)
        from .legacy import encode_legacy_reply

        return encode_legacy_reply(reply)

    def _refuse(self, router: zmq.Socket, conn: int, envelope: list[bytes], message: str, request_id: Any = None,
                legacy: bool = False) -> None:  # fmt: skip
        with self.stats.lock:
            self.stats.errors += 1
        self._send(router, conn, envelope, protocol.error(message, request_id), legacy)

    def _user_id(self, frame: zmq.Frame) -> str | None:
        """The CURVE public key (Z85) the ZAP handler authenticated this message's connection with."""
        if self.config.curve_dir is None:
            return None
        try:
            return frame.get("User-Id")
        except zmq.ZMQError:
            return None

    def _on_message(self, router: zmq.Socket, frames: list[zmq.Frame]) -> None:
        """Check, decode, validate and dispatch one message. Never raises: errors become error replies.

        Before anything is decoded: the message's size and frame count (a short error to the bare
        routing id if over), then the client's and the server's queue budget ("busy" if over).
        """
        received = time.perf_counter()
        with self.stats.lock:
            self.stats.requests += 1
        if len(frames) < 2:
            return  # nothing to address a reply to
        identity, payload = frames[0].bytes, frames[-1]
        conn = self._connections.of(payload.get(zmq.SRCFD))
        size = sum(len(frame) for frame in frames[1:])
        bare = [identity, b""]  # a REQ socket and a DEALER both read this
        if size > self.config.max_message_bytes or len(frames) > _MAX_FRAMES:
            self._refuse(
                router, conn, bare,
                f"message of {size} bytes in {len(frames) - 1} frames refused: the limit is "
                f"{self.config.max_message_bytes} bytes in at most {_MAX_FRAMES - 1} frames",
            )  # fmt: skip
            return
        envelope = [frame.bytes for frame in frames[:-1]]
        if any(len(part) > _MAX_ENVELOPE_PART for part in envelope[1:]):
            self._refuse(router, conn, bare, f"envelope frames must be at most {_MAX_ENVELOPE_PART} bytes")
            return
        ticket = self._budget.reserve(identity, size)
        if isinstance(ticket, str):
            self._refuse(router, conn, envelope, ticket)
            return
        queued = False
        try:
            queued = self._dispatch(router, identity, conn, envelope, payload, received, ticket)
        finally:
            if not queued:
                self._budget.release(ticket)

    def _dispatch(
        self,
        router: zmq.Socket,
        identity: bytes,
        conn: int,
        envelope: list[bytes],
        payload: zmq.Frame,
        received: float,
        ticket: tuple[bytes, int],
    ) -> bool:
        """Decode and answer or queue one message; True if it was queued for the worker."""
        legacy = False
        request_id = None
        try:
            if self.config.legacy_pickle:
                from .legacy import LegacyPickleError, looks_like_pickle, parse_legacy_request

                if looks_like_pickle(payload.buffer[:3]):
                    legacy = True
                    try:
                        request = {
                            "v": protocol.PROTOCOL_VERSION,
                            **parse_legacy_request(payload.bytes, max_bytes=self.config.max_message_bytes),
                        }
                    except LegacyPickleError as exc:
                        raise protocol.ProtocolError(str(exc)) from None
            if not legacy:
                request = protocol.decode(payload.buffer, self.config.max_message_bytes)
                request_id = protocol.request_id(request)
            protocol.validate_request(request)
            kind = request["type"]
            if kind == "ping":
                self._send(router, conn, envelope, protocol.ok(request_id, server_ms=_ms_since(received)), legacy)
                return False
            token = request.get("token")
            key: SessionKey = ("token", token) if token is not None else identity
            session = self._session(key, conn, self._user_id(payload))
            self._apply_overrides(session, request)
            if kind == "reset":
                session.clear()
                self._send(router, conn, envelope, protocol.ok(request_id, server_ms=_ms_since(received)), legacy)
            elif kind == "info":
                reply = protocol.ok(request_id, info=self.info(session), server_ms=_ms_since(received))
                self._send(router, conn, envelope, reply, legacy)
            else:
                with self._inflight_lock:
                    self._inflight += 1
                self._jobs.put(_Job(envelope, identity, request, received, legacy, session, conn, ticket))
                return True
        except (protocol.ProtocolError, ValueError) as exc:
            self._refuse(router, conn, envelope, str(exc), request_id, legacy)
        except Exception as exc:  # a bug must not take the server down for everyone else
            log.exception("error handling a message")
            self._refuse(router, conn, envelope, f"internal error: {type(exc).__name__}", request_id, legacy)
        return False

    # ---------------------------------------------------------------------------------- worker

    def _next_job(self, timeout: float) -> _Job | None:
        if self._backlog:
            return self._backlog.popleft()
        try:
            return self._jobs.get(timeout=timeout) if timeout > 0 else self._jobs.get_nowait()
        except queue.Empty:
            return None

    def _next_batch(self) -> list[_Job]:
        """Wait for one job, then gather more for up to ``batch_wait_ms``, one per session.

        A client's second request depends on the history its first one leaves, so it waits for the
        next batch, ahead of anything that arrived later.
        """
        first = self._next_job(0.05)
        if first is None:
            return []
        batch, seen, deferred = [first], {id(first.session)}, []
        deadline = time.perf_counter() + self.config.batch_wait_ms / 1e3
        while len(batch) < self.config.max_batch:
            job = self._next_job(deadline - time.perf_counter())
            if job is None:
                break
            (deferred if id(job.session) in seen else batch).append(job)
            seen.add(id(job.session))
        self._backlog.extendleft(reversed(deferred))
        return batch

    def _finish(self, job: _Job) -> None:
        """The job is answered or dropped: give back its budget and its in-flight count (once)."""
        if job.done:
            return
        job.done = True
        self._budget.release(job.ticket)
        job.ticket = None
        with self._inflight_lock:
            self._inflight -= 1

    def _worker_loop(self) -> None:
        out = self._ctx.socket(zmq.PUSH)
        out.connect(self._reply_addr)
        try:
            while not (self._stopping.is_set() and self._idle()):
                batch = self._next_batch()
                try:
                    self._serve_batch(out, batch)
                except Exception:  # a bug must not stop the worker: answer what is left, then go on
                    log.exception("the worker failed on a batch of %d", len(batch))
                    for job in batch:
                        if not job.done:
                            self._push(out, job, protocol.error("internal error", protocol.request_id(job.request)))
        finally:
            out.close(linger=1000)

    def _push(self, out: zmq.Socket, job: _Job, reply: dict[str, Any]) -> None:
        """Hand a reply to the I/O thread as ``[connection, *envelope, body]`` and finish the job."""
        body = self._encode_reply(reply, job.legacy)
        self._budget.release(job.ticket)  # its request is done with; the reply is small
        job.ticket = None
        out.send_multipart([job.conn.to_bytes(8, "little"), *job.envelope, body])
        self._finish(job)

    def _serve_batch(self, out: zmq.Socket, batch: list[_Job]) -> None:
        """Run the batch's jobs whose connections are open and send their replies; drop the others."""
        live = []
        for job in batch:
            if self._connections.is_open(job.conn):
                live.append(job)
            else:  # its client hung up: nobody to answer
                self._finish(job)
        if not live:
            return
        for job, reply in zip(live, self._run_batch(live), strict=True):
            self._push(out, job, reply)

    def _run_batch(self, batch: list[_Job]) -> list[dict[str, Any]]:
        """Run one batch through the engine; every job gets a reply, an error one if it failed."""
        started = time.perf_counter()
        requests = [
            FrameRequest(
                job.session,
                job.request["frame"],
                job.request.get("noise"),
                job.request.get("seed"),
                prefix=job.request.get("prefix"),
                delay=job.request.get("delay"),
                chunking=job.request.get("chunking") or "rtc",
                beta=job.request.get("beta"),
            )
            for job in batch
        ]
        try:
            result = self.engine.predict_batch(requests)
        except Exception as exc:  # a bug must not take the worker down: answer everyone in the batch
            log.exception("batch of %d failed", len(batch))
            replies = [
                protocol.error(f"internal error: {type(exc).__name__}", protocol.request_id(job.request))
                for job in batch
            ]
            batch_size = 0
        else:
            if result.failure is not None:
                log.error("batch of %d failed", result.batch_size, exc_info=result.failure)
            replies = []
            for job, action, error in zip(batch, result.actions, result.errors, strict=True):
                request_id = protocol.request_id(job.request)
                if action is not None:
                    replies.append(
                        protocol.ok(
                            request_id,
                            pred={"action_tensor": action},
                            server_ms=_ms_since(job.received),
                            queue_ms=(started - job.received) * 1e3,
                            batch_size=result.batch_size,
                        )
                    )
                elif error is not None and error is result.failure:
                    replies.append(protocol.error(f"inference failed: {type(error).__name__}: {error}", request_id))
                else:
                    replies.append(protocol.error(str(error), request_id))
            batch_size = result.batch_size
        with self.stats.lock:
            self.stats.batches.append(batch_size)
            for reply in replies:
                if reply["status"] == "ok":
                    self.stats.predictions += 1
                    self.stats.latency_ms.append(reply["server_ms"])
                else:
                    self.stats.errors += 1
        return replies


def _ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1e3
