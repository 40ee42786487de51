"""A safe, multi-client, batching ZeroMQ inference server.

One ROUTER socket; versioned msgpack messages (:mod:`nitrogen.serving.protocol`), never pickle (except the
opt-in legacy mode, through a restricted unpickler). Each client identity has its own session (a
:class:`~nitrogen.inference.history.FrameHistory`: frame history, game and CFG scale). ``predict``
requests from different clients that arrive within the batching window run as one batch through
:meth:`PolicyEngine.predict_batch`, the same path an in-process session takes.

Threads: the I/O thread owns the ROUTER socket; it decodes messages, checks them at the wire level
(:func:`protocol.validate_request`), answers ``ping``/``info``/``reset`` itself, and queues
``predict`` requests. The worker thread takes batches from the queue, runs the engine (which checks
each frame, once), and hands the replies back to the I/O thread through an in-process socket, so
only one thread ever touches the ROUTER. A predict reply carries ``pred: {"action_tensor"}``; the
legacy encoder derives what the original client reads from it.
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

from ..inference.engine import FrameRequest, PolicyEngine
from ..inference.history import FrameHistory
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
    cfg_scale: float = Field(1.0, allow_inf_nan=False, description="default per session; 1.0 is off")
    context_length: int | None = Field(None, ge=1, description="frames of history; default: the checkpoint's")
    game: str | int | None = None
    max_batch: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    max_sessions: int = Field(256, ge=1)
    session_ttl_s: float = Field(600.0, gt=0)
    curve_dir: Path | None = Field(None, description="from `nitrogen keys generate`: server key + clients/ allow-list")
    insecure: bool = Field(False, description="allow a non-loopback host without CURVE (prints a warning)")
    legacy_pickle: bool = Field(False, description="accept the original client's pickled messages, restricted")
    stats_interval_s: float = Field(30.0, gt=0)
    max_message_bytes: int = Field(protocol.MAX_MESSAGE_BYTES, gt=0)

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


class ClientSession(FrameHistory):
    """One client's state: its frame history and settings, and when it was last heard from."""

    def __init__(self, context_length: int, *, game_id: int | None, game_name: str | None, cfg_scale: float):
        super().__init__(context_length, game_id=game_id, game_name=game_name, cfg_scale=cfg_scale)
        self.last_seen = time.monotonic()


@dataclass
class _Job:
    envelope: list[bytes]
    identity: bytes
    request: dict[str, Any]
    received: float
    legacy: bool


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
        self.sessions: OrderedDict[bytes, ClientSession] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._backlog: deque[_Job] = deque()  # deferred jobs, only touched by the worker
        self._ctx = zmq.Context()
        self._auth: Any = None
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

    def _bind(self) -> zmq.Socket:
        cfg = self.config
        if cfg.curve_dir is not None:  # read once, before any socket opens; raises naming a bad file
            from .keys import CLIENTS_DIR, load_allow_list

            allowed = load_allow_list(cfg.curve_dir / CLIENTS_DIR)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its identity and session
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if cfg.curve_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator

            from .keys import load_keypair

            keys = load_keypair(cfg.curve_dir / "server.key_secret")
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

    def _session(self, identity: bytes) -> ClientSession:
        """The caller's session, created on first use; the least recently used one goes at capacity."""
        with self._sessions_lock:
            session = self.sessions.get(identity)
            if session is None:
                if len(self.sessions) >= self.config.max_sessions:
                    evicted, _ = self.sessions.popitem(last=False)
                    log.info("evicted the idle session of %r (at %d sessions)", evicted, self.config.max_sessions)
                game_id, game_name = self.default_game
                session = ClientSession(
                    self.context_length, game_id=game_id, game_name=game_name, cfg_scale=self.config.cfg_scale
                )
                self.sessions[identity] = session
            self.sessions.move_to_end(identity)
            session.last_seen = time.monotonic()
            return session

    def _expire_sessions(self) -> None:
        deadline = time.monotonic() - self.config.session_ttl_s
        with self._sessions_lock:
            for identity in [i for i, s in self.sessions.items() if s.last_seen < deadline]:
                del self.sessions[identity]

    def _apply_overrides(self, session: ClientSession, request: dict[str, Any]) -> None:
        if "game" in request:
            session.game_id, session.game_name = self.engine.resolve_game(request["game"])
        if "cfg_scale" in request:
            session.cfg_scale = float(request["cfg_scale"])

    def info(self, session: ClientSession | None = None) -> dict[str, Any]:
        info = {
            **self.engine.info(),
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
        router = self._bind()
        replies = self._ctx.socket(zmq.PULL)
        replies.bind(self._reply_addr)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        next_stats = next_expiry = time.monotonic()
        try:
            while True:
                events = dict(poller.poll(50))
                if replies in events:
                    while replies.poll(0):
                        router.send_multipart(replies.recv_multipart())
                if router in events and not self._stopping.is_set():
                    for _ in range(256):  # drain what is ready, then look at replies again
                        if not router.poll(0):
                            break
                        self._on_message(router, router.recv_multipart())
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
                        router.send_multipart(replies.recv_multipart())
                    break
        finally:
            router.close(linger=1000)
            replies.close(linger=0)

    def _idle(self) -> bool:
        with self._inflight_lock:
            return self._inflight == 0 and self._jobs.empty()

    def _send(self, router: zmq.Socket, envelope: list[bytes], reply: dict[str, Any], legacy: bool) -> None:
        router.send_multipart([*envelope, self._encode_reply(reply, legacy)])

    def _encode_reply(self, reply: dict[str, Any], legacy: bool) -> bytes:
        if not legacy:
            return protocol.encode(reply)
        from .legacy import encode_legacy_reply

        return encode_legacy_reply(reply)

    def _on_message(self, router: zmq.Socket, frames: list[bytes]) -> None:
        """Decode, validate and dispatch one message. Never raises: errors become error replies."""
        received = time.perf_counter()
        with self.stats.lock:
            self.stats.requests += 1
        if len(frames) < 2:
            return  # nothing to address a reply to
        identity, envelope, payload = frames[0], frames[:-1], frames[-1]
        legacy = False
        request_id = None
        try:
            if self.config.legacy_pickle:
                from .legacy import LegacyPickleError, looks_like_pickle, parse_legacy_request

                if looks_like_pickle(payload):
                    legacy = True
                    try:
                        request = {"v": protocol.PROTOCOL_VERSION, **parse_legacy_request(payload)}
                    except LegacyPickleError as exc:
                        raise protocol.ProtocolError(str(exc)) from None
            if not legacy:
                request = protocol.decode(payload, self.config.max_message_bytes)
                request_id = request.get("id")
                if not isinstance(request_id, (int, str, type(None))):
                    request_id = None
            protocol.validate_request(request)
            kind = request["type"]
            if kind == "ping":
                self._send(router, envelope, protocol.ok(request_id, server_ms=_ms_since(received)), legacy)
                return
            session = self._session(identity)
            self._apply_overrides(session, request)
            if kind == "reset":
                session.clear()
                self._send(router, envelope, protocol.ok(request_id, server_ms=_ms_since(received)), legacy)
            elif kind == "info":
                reply = protocol.ok(request_id, info=self.info(session), server_ms=_ms_since(received))
                self._send(router, envelope, reply, legacy)
            else:
                with self._inflight_lock:
                    self._inflight += 1
                self._jobs.put(_Job(envelope, identity, request, received, legacy))
        except (protocol.ProtocolError, ValueError) as exc:
            with self.stats.lock:
                self.stats.errors += 1
            self._send(router, envelope, protocol.error(str(exc), request_id), legacy)
        except Exception as exc:  # a bug must not take the server down for everyone else
            log.exception("error handling a message")
            with self.stats.lock:
                self.stats.errors += 1
            self._send(router, envelope, protocol.error(f"internal error: {type(exc).__name__}", request_id), legacy)

    # ---------------------------------------------------------------------------------- worker

    def _next_job(self, timeout: float) -> _Job | None:
        if self._backlog:
            return self._backlog.popleft()
        try:
            return self._jobs.get(timeout=timeout) if timeout > 0 else self._jobs.get_nowait()
        except queue.Empty:
            return None

    def _next_batch(self) -> list[_Job]:
        """Wait for one job, then gather more for up to ``batch_wait_ms``, one per client.

        A client's second request depends on the history its first one leaves, so it waits for the
        next batch, ahead of anything that arrived later.
        """
        first = self._next_job(0.05)
        if first is None:
            return []
        batch, seen, deferred = [first], {first.identity}, []
        deadline = time.perf_counter() + self.config.batch_wait_ms / 1e3
        while len(batch) < self.config.max_batch:
            job = self._next_job(deadline - time.perf_counter())
            if job is None:
                break
            (deferred if job.identity in seen else batch).append(job)
            seen.add(job.identity)
        self._backlog.extendleft(reversed(deferred))
        return batch

    def _worker_loop(self) -> None:
        out = self._ctx.socket(zmq.PUSH)
        out.connect(self._reply_addr)
        try:
            while not (self._stopping.is_set() and self._idle()):
                batch = self._next_batch()
                if not batch:
                    continue
                for job, reply in zip(batch, self._run_batch(batch), strict=True):
                    out.send_multipart([*job.envelope, self._encode_reply(reply, job.legacy)])
                    with self._inflight_lock:
                        self._inflight -= 1
        finally:
            out.close(linger=1000)

    def _run_batch(self, batch: list[_Job]) -> list[dict[str, Any]]:
        """Run one batch through the engine; every job gets a reply, an error one if it failed."""
        started = time.perf_counter()
        requests = [
            FrameRequest(
                self._session(job.identity), job.request["frame"], job.request.get("noise"), job.request.get("seed")
            )
            for job in batch
        ]
        try:
            result = self.engine.predict_batch(requests)
        except Exception as exc:  # a bug must not take the worker down: answer everyone in the batch
            log.exception("batch of %d failed", len(batch))
            replies = [protocol.error(f"internal error: {type(exc).__name__}", job.request.get("id")) for job in batch]
            batch_size = 0
        else:
            if result.failure is not None:
                log.error("batch of %d failed", result.batch_size, exc_info=result.failure)
            replies = []
            for job, action, error in zip(batch, result.actions, result.errors, strict=True):
                request_id = job.request.get("id")
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
