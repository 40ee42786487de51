"""Serving throughput and latency of the NitroGen inference server, with and without batching.

Each run starts an :class:`~nitrogen.serving.server.InferenceServer` on a free loopback port, in this
process, and drives it with ``N`` client threads, each with its own
:class:`~nitrogen.serving.client.ModelClient` (so its own session and frame history on the server). Every
client sends one untimed warm-up ``predict``; once all of them are back, the clock starts and each
client sends ``R`` more back-to-back (the next one as soon as the reply arrives). Frames are random
256x256 uint8 RGB images, and every request carries a fixed ``seed``, so the runs are repeatable.

Every concurrency runs twice, on a fresh server each time:

* **unbatched**: ``ServerConfig(max_batch=1)``, one request per forward pass;
* **batched**: ``ServerConfig(max_batch=16, batch_wait_ms=2)``: requests from different clients
  that arrive within the 2 ms window share one forward pass.

Models:

* ``tiny``: the golden checkpoint ``../shared/golden/released_layout.pt`` (width 64, float32);
* ``full``: the released config (494M parameters) with random weights, bfloat16 on the CPU, weights
  pre-packed for oneDNN. Latency does not depend on the weight values.

Columns of the throughput table:

* **clients**: concurrent client threads; **mode**: batched or unbatched, as above;
* **preds**: timed predictions (clients x requests); **wall s**: from the start signal until the
  last client has its last reply;
* **pred/s**: preds / wall s, the throughput;
* **rt p50 / rt p95 ms**: the client's round trip per request (``timing_ms["roundtrip_ms"]``: send
  to reply), which includes waiting for other clients' forward passes;
* **server p50 ms**: the server's own time per request (``server_ms``: from receipt of the message
  to its reply being built), queueing included; **queue p50 ms**: the part of it spent waiting
  for the forward pass to start (``queue_ms``, includes the batching window);
* **mean batch**: predictions per forward pass during the timed phase (server stats);
* **speedup**: batched pred/s over unbatched pred/s at the same number of clients.

The protocol-overhead table (tiny model, 1 client, unbatched server) shows the transport cost:
``ping`` round trips (no model, no session), and for ``predict`` the round trip minus
``server_ms``, that is message encoding, ZeroMQ transport both ways and decoding, on top of what the
server spends. Target: under 2 ms (p50) for a 256x256 frame.

Verdicts printed at the end: protocol overhead < 2 ms; batched throughput >= 2x unbatched at 8
clients (for each model, at the concurrency closest to 8 that was run).

Run from the repository root::

    PYTHONPATH=. python bench/serve.py --quick                      # tiny model, clients 1,8, R=5
    PYTHONPATH=. python bench/serve.py --models tiny                # clients 1,4,8,16, R=30
    PYTHONPATH=. python bench/serve.py --models full --clients 1,4,8 --requests 3
    PYTHONPATH=. python bench/serve.py --json serve.json            # both models, defaults
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.atomic import atomic_write_json
from nitrogen.inference.engine import PolicyEngine
from nitrogen.model.checkpoint import RawCheckpoint, build_model
from nitrogen.model.configuration import CheckpointConfig
from nitrogen.serving.client import ModelClient
from nitrogen.serving.server import InferenceServer, ServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CHECKPOINT = REPO_ROOT.parent / "shared" / "golden" / "released_layout.pt"

ModelName = Literal["tiny", "full"]
Mode = Literal["unbatched", "batched"]
MODELS: tuple[ModelName, ...] = ("tiny", "full")
MODES: tuple[Mode, ...] = ("unbatched", "batched")
DEFAULT_CLIENTS: dict[ModelName, tuple[int, ...]] = {"tiny": (1, 4, 8, 16), "full": (1, 4, 8)}
DEFAULT_REQUESTS: dict[ModelName, int] = {"tiny": 30, "full": 3}

FRAME_SIDE = 256
FRAME_POOL = 8  # distinct random frames, cycled through by every client
CLIENT_TIMEOUT_S = 900.0  # long enough for 16 queued full-size chunks; no retries, they would skew timings
OVERHEAD_TARGET_MS = 2.0
BATCHING_TARGET = 2.0
BATCHING_TARGET_CLIENTS = 8


# ------------------------------------------------------------------------------------ models


def load_engine(name: ModelName, num_steps: int | None = None) -> tuple[PolicyEngine, str]:
    """The engine for a benchmark model, and a one-line description of it (``num_steps``: Euler
    steps, default the checkpoint's; e.g. a distilled student's count, issue 23)."""
    t0 = time.perf_counter()
    if name == "tiny":
        engine = PolicyEngine.from_checkpoint(TINY_CHECKPOINT, device="cpu", num_steps=num_steps)
        what = f"tiny golden model ({TINY_CHECKPOINT.name})"
    else:
        torch.manual_seed(0)
        model = build_model(CheckpointConfig()).eval().to(torch.bfloat16)
        engine = PolicyEngine(
            model, RawCheckpoint(CheckpointConfig(), {}, None), device=torch.device("cpu"), num_steps=num_steps
        )
        what = "released config, random weights"
    params = sum(p.numel() for p in engine.model.parameters())
    desc = (
        f"{what}: {params / 1e6:.1f}M parameters, {engine.precision}, {engine.packed_layers} packed layers, "
        f"{engine.num_steps} steps, horizon {engine.action_horizon} (ready in {time.perf_counter() - t0:.1f} s)"
    )
    return engine, desc


def server_config(mode: Mode, max_batch: int, batch_wait_ms: float) -> ServerConfig:
    if mode == "unbatched":
        return ServerConfig(port=0, max_batch=1, batch_wait_ms=0.0)
    return ServerConfig(port=0, max_batch=max_batch, batch_wait_ms=batch_wait_ms)


def frame_pool(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (FRAME_SIDE, FRAME_SIDE, 3), dtype=np.uint8) for _ in range(FRAME_POOL)]


def request_seed(client: int, request: int) -> int:
    """A fixed sampling seed per (client, request); request -1 is the warm-up."""
    return client * 1_000_000 + request + 1


# ----------------------------------------------------------------------------------- serving


@dataclass
class RunResult:
    """One (model, clients, mode) run; times in milliseconds unless named otherwise."""

    model: str
    clients: int
    mode: str
    requests_per_client: int
    predictions: int
    wall_s: float
    throughput: float
    roundtrip_p50_ms: float
    roundtrip_p95_ms: float
    server_p50_ms: float
    queue_p50_ms: float
    mean_batch: float
    batches: int
    speedup: float | None = None
    roundtrip_ms: list[float] = field(default_factory=list, repr=False)
    server_ms: list[float] = field(default_factory=list, repr=False)
    queue_ms: list[float] = field(default_factory=list, repr=False)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _client_main(
    address: str,
    index: int,
    frames: Sequence[np.ndarray],
    requests: int,
    warmed: threading.Barrier,
    go: threading.Barrier,
    timings: list[dict[str, float]],
    errors: list[Exception],
) -> None:
    """One client thread: a warm-up predict, wait for the start signal, then ``requests`` predicts."""
    try:
        with ModelClient(address, timeout_s=CLIENT_TIMEOUT_S, retries=1) as client:
            client.predict(frames[index % len(frames)], seed=request_seed(index, -1))
            warmed.wait()
            go.wait()
            for j in range(requests):
                chunk = client.predict(frames[(index + j + 1) % len(frames)], seed=request_seed(index, j))
                timings.append(chunk.timing_ms)
    except Exception as exc:  # noqa: BLE001 (any failure: report it and break the barriers so nobody hangs)
        errors.append(exc)
        warmed.abort()
        go.abort()


def run_serving(
    engine: PolicyEngine,
    model: str,
    clients: int,
    mode: Mode,
    requests: int,
    frames: Sequence[np.ndarray],
    max_batch: int,
    batch_wait_ms: float,
) -> RunResult:
    """Serve ``engine`` on a fresh server and time ``clients`` x ``requests`` predictions."""
    server = InferenceServer(engine, server_config(mode, max_batch, batch_wait_ms)).start()
    assert server.address is not None
    warmed, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    per_client: list[list[dict[str, float]]] = [[] for _ in range(clients)]
    errors: list[Exception] = []
    threads = [
        threading.Thread(
            target=_client_main,
            args=(server.address, i, frames, requests, warmed, go, per_client[i], errors),
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    try:
        for thread in threads:
            thread.start()
        before: dict[str, Any] = {}
        try:
            warmed.wait()
            before = server.stats.snapshot()  # every warm-up batch is recorded before its reply goes out
            go.wait()
        except threading.BrokenBarrierError:
            pass  # a client failed: it is in ``errors``, raised below
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - t0
        after = server.stats.snapshot()
    finally:
        server.stop()
    if errors or not before:
        cause = errors[0] if errors else None
        raise RuntimeError(f"{model} / {clients} clients / {mode}: a client failed: {cause!r}") from cause

    timings = [t for client_timings in per_client for t in client_timings]
    roundtrip = [t["roundtrip_ms"] for t in timings]
    server_ms = [t["server_ms"] for t in timings if "server_ms" in t]
    queue_ms = [t["queue_ms"] for t in timings if "queue_ms" in t]
    predictions = after["predictions"] - before["predictions"]
    batches = after["batches"] - before["batches"]
    return RunResult(
        model=model,
        clients=clients,
        mode=mode,
        requests_per_client=requests,
        predictions=len(timings),
        wall_s=wall_s,
        throughput=len(timings) / wall_s,
        roundtrip_p50_ms=_percentile(roundtrip, 50),
        roundtrip_p95_ms=_percentile(roundtrip, 95),
        server_p50_ms=_percentile(server_ms, 50),
        queue_p50_ms=_percentile(queue_ms, 50),
        mean_batch=predictions / batches if batches else float("nan"),
        batches=batches,
        roundtrip_ms=roundtrip,
        server_ms=server_ms,
        queue_ms=queue_ms,
    )


@dataclass
class OverheadResult:
    """Transport cost with one client: ping round trips and predict round trip minus server time."""

    pings: int
    predicts: int
    ping_p50_ms: float
    ping_p95_ms: float
    roundtrip_p50_ms: float
    roundtrip_p95_ms: float
    server_p50_ms: float
    server_p95_ms: float
    overhead_p50_ms: float
    overhead_p95_ms: float
    target_ms: float = OVERHEAD_TARGET_MS

    @property
    def met(self) -> bool:
        return self.overhead_p50_ms < self.target_ms


def measure_overhead(engine: PolicyEngine, frames: Sequence[np.ndarray], predicts: int, pings: int) -> OverheadResult:
    """One client against an unbatched server (no batching window): the protocol's own cost."""
    with InferenceServer(engine, server_config("unbatched", 1, 0.0)) as server:
        assert server.address is not None
        with ModelClient(server.address, timeout_s=CLIENT_TIMEOUT_S, retries=1) as client:
            client.ping()
            client.predict(frames[0], seed=request_seed(0, -1))  # warm-up
            ping_ms = [client.ping() for _ in range(pings)]
            roundtrip, server_ms = [], []
            for j in range(predicts):
                timing = client.predict(frames[(j + 1) % len(frames)], seed=request_seed(0, j)).timing_ms
                roundtrip.append(timing["roundtrip_ms"])
                server_ms.append(timing["server_ms"])
    overhead = [rt - s for rt, s in zip(roundtrip, server_ms, strict=True)]
    return OverheadResult(
        pings=pings,
        predicts=predicts,
        ping_p50_ms=_percentile(ping_ms, 50),
        ping_p95_ms=_percentile(ping_ms, 95),
        roundtrip_p50_ms=_percentile(roundtrip, 50),
        roundtrip_p95_ms=_percentile(roundtrip, 95),
        server_p50_ms=_percentile(server_ms, 50),
        server_p95_ms=_percentile(server_ms, 95),
        overhead_p50_ms=_percentile(overhead, 50),
        overhead_p95_ms=_percentile(overhead, 95),
    )


def add_speedups(results: Sequence[RunResult]) -> None:
    """Fill ``speedup`` of every batched run: its throughput over the unbatched one's."""
    unbatched = {(r.model, r.clients): r.throughput for r in results if r.mode == "unbatched"}
    for r in results:
        base = unbatched.get((r.model, r.clients))
        if r.mode == "batched" and base:
            r.speedup = r.throughput / base


@dataclass
class BatchingVerdict:
    model: str
    clients: int
    speedup: float
    target: float = BATCHING_TARGET

    @property
    def met(self) -> bool:
        return self.speedup >= self.target


def batching_verdicts(results: Sequence[RunResult]) -> list[BatchingVerdict]:
    """Per model, the batched speedup at the concurrency closest to 8 (the larger one on a tie)."""
    verdicts = []
    for model in dict.fromkeys(r.model for r in results):
        runs = [r for r in results if r.model == model and r.speedup is not None]
        if runs:
            best = min(runs, key=lambda r: (abs(r.clients - BATCHING_TARGET_CLIENTS), -r.clients))
            assert best.speedup is not None
            verdicts.append(BatchingVerdict(model, best.clients, best.speedup))
    return verdicts


# ------------------------------------------------------------------------------------ report


def serving_info() -> dict[str, Any]:
    import msgpack
    import zmq

    return {
        **machine_info(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_runs(results: Sequence[RunResult]) -> str:
    lines = [
        (
            "| model | clients | mode | preds | wall s | pred/s | rt p50 ms | rt p95 ms | server p50 ms "
            "| queue p50 ms | mean batch | speedup |"
        ),
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        lines.append(
            f"| {r.model} | {r.clients} | {r.mode} | {r.predictions} | {r.wall_s:.2f} | {_fmt(r.throughput, 2)} "
            f"| {_fmt(r.roundtrip_p50_ms)} | {_fmt(r.roundtrip_p95_ms)} | {_fmt(r.server_p50_ms)} "
            f"| {_fmt(r.queue_p50_ms)} | {_fmt(r.mean_batch, 2)} | {speedup} |"
        )
    return "\n".join(lines)


def format_overhead(o: OverheadResult) -> str:
    return "\n".join(
        [
            "| measure (tiny model, 1 client, unbatched) | n | p50 ms | p95 ms |",
            "|---|--:|--:|--:|",
            f"| ping round trip (transport only) | {o.pings} | {o.ping_p50_ms:.3f} | {o.ping_p95_ms:.3f} |",
            f"| predict round trip | {o.predicts} | {o.roundtrip_p50_ms:.3f} | {o.roundtrip_p95_ms:.3f} |",
            f"| predict server_ms | {o.predicts} | {o.server_p50_ms:.3f} | {o.server_p95_ms:.3f} |",
            (
                f"| **overhead = round trip - server_ms** | {o.predicts} | **{o.overhead_p50_ms:.3f}** "
                f"| {o.overhead_p95_ms:.3f} |"
            ),
        ]
    )


# -------------------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def _model_list(text: str) -> list[ModelName]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown or text!r}; choose from {', '.join(MODELS)}")
    return [n for n in MODELS if n in names]  # type: ignore[misc]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=_model_list, default=list(MODELS), help="tiny,full (default both)")
    parser.add_argument(
        "--clients",
        type=_int_list,
        default=None,
        help="concurrencies, e.g. 1,4,8,16 (default: tiny 1,4,8,16; full 1,4,8)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="timed requests per client after 1 warm-up (default: tiny 30, full 3)",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="max_batch of the batched server (default 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="batching window (default 2 ms)")
    parser.add_argument("--overhead-requests", type=int, default=50, help="predicts for the overhead table (50)")
    parser.add_argument("--pings", type=int, default=200, help="pings for the overhead table (default 200)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the checkpoint's, 16)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny only, clients 1,8, 5 requests")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.clients = ["tiny"], args.clients or [1, 8]
        args.requests = args.requests or 5
        args.overhead_requests, args.pings = min(args.overhead_requests, 10), min(args.pings, 50)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be >= 1")
    if args.overhead_requests < 1 or args.pings < 1:
        parser.error("--overhead-requests and --pings must be >= 1")
    if not 1 <= args.max_batch <= 256 or args.batch_wait_ms < 0:
        parser.error("--max-batch must be in 1..256 and --batch-wait-ms >= 0")
    if "tiny" in args.models and not TINY_CHECKPOINT.is_file():
        parser.error(f"the tiny model needs {TINY_CHECKPOINT}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = serving_info()
    print("## NitroGen serving benchmark\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(
        f"\nframes: random {FRAME_SIDE}x{FRAME_SIDE} uint8 RGB; server on loopback TCP in this process; "
        f"batched = max_batch {args.max_batch}, batch_wait_ms {args.batch_wait_ms:g}; unbatched = max_batch 1"
    )
    sys.stdout.flush()

    frames = frame_pool()
    results: list[RunResult] = []
    models: dict[str, str] = {}
    overhead: OverheadResult | None = None
    for name in args.models:
        engine, desc = load_engine(name, args.steps)
        models[name] = desc
        clients = args.clients or list(DEFAULT_CLIENTS[name])
        requests = args.requests or DEFAULT_REQUESTS[name]
        print(f"\n{name}: {desc}; {requests} timed request(s) per client", flush=True)
        if name == "tiny":
            overhead = measure_overhead(engine, frames, args.overhead_requests, args.pings)
        for n in clients:
            for mode in MODES:
                t0 = time.perf_counter()
                result = run_serving(engine, name, n, mode, requests, frames, args.max_batch, args.batch_wait_ms)
                results.append(result)
                print(
                    f"  {name} {n} client(s) {mode}: {result.throughput:.2f} pred/s ({time.perf_counter() - t0:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        del engine

    add_speedups(results)
    verdicts = batching_verdicts(results)
    print("\n### Throughput and latency\n")
    print(format_runs(results))
    if overhead is not None:
        print("\n### Protocol overhead\n")
        print(format_overhead(overhead))
    print("\n### Targets\n")
    if overhead is not None:
        print(
            f"- protocol overhead (p50 round trip - server_ms, 256x256 predict): {overhead.overhead_p50_ms:.2f} ms "
            f"(p95 {overhead.overhead_p95_ms:.2f} ms); target < {OVERHEAD_TARGET_MS:g} ms: "
            f"{'met' if overhead.met else 'NOT met'}"
        )
    for v in verdicts:
        note = "" if v.clients == BATCHING_TARGET_CLIENTS else f" (closest run to {BATCHING_TARGET_CLIENTS})"
        print(
            f"- batching, {v.model} model at {v.clients} clients{note}: {v.speedup:.2f}x unbatched throughput; "
            f"target >= {BATCHING_TARGET:g}x: {'met' if v.met else 'NOT met'}"
        )

    if args.json is not None:
        payload = {
            "machine": info,
            "models": models,
            "settings": {
                "max_batch": args.max_batch,
                "batch_wait_ms": args.batch_wait_ms,
                "frame_side": FRAME_SIDE,
                "requests": args.requests,
                "clients": args.clients,
            },
            "runs": [asdict(r) for r in results],
            "overhead": {**asdict(overhead), "met": overhead.met} if overhead is not None else None,
            "batching": [{**asdict(v), "met": v.met} for v in verdicts],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
