"""Hostile input against the inference server: a structure-aware msgpack fuzzer, with a well-behaved client.

The server is what a user runs, ``nitrogen serve`` with its defaults, in a child process (so its
memory is its own): the golden checkpoint ``two_frames_cfg_sinusoidal.pt`` (two frames of history,
CFG 2.0), on a free loopback port. Then:

1. **Baseline**: a well-behaved client, in its own process, runs the golden sequence in a loop
   (``reset``, predict frame 0, predict frame 1, compare with the golden actions) for ``--baseline-s``
   seconds. Its predict round trips give the p95 without attack.
2. **Attack**: this process sends ``--messages`` hostile messages in batches of ``--batch``, from a
   seeded generator of protocol-shaped messages, while the well-behaved client keeps going. After
   every batch a second client (routing id ``golden-check``) runs the golden sequence once: its
   history (two frames), CFG scale and result must be exactly those of the golden run, whatever
   the attacker did; the server process must be alive; its RSS is read from ``/proc/PID/status``.

The kinds of messages (shares of each batch in ``KINDS``): wrong types in every field; arrays with
huge or wrapping declared shapes and disallowed dtypes; deep nesting (up to 200,000 levels); up to
30 MB of empty containers; truncated and bit-flipped valid requests; random bytes; valid but extreme
requests (CFG +-100, noise +-1e4, 30 MB frames); oversize multipart messages (36 MB in four frames,
100 frames, huge envelope frames); a socket that claims the golden client's routing id and tries to
reset, poison (``cfg_scale``) and read its session; ``info`` and ``predict`` floods from four
sockets that never read a reply (amplification); and, every ``--flood-every`` batches, a flood of
300 new identities that stay connected. Strings carry a marker; no reply may contain it, except in
the echoed ``id`` (a string of up to 64 characters is echoed by design).

Printed: the table of what was sent and what held, and the verdicts:

* crashes: the server process exited (must be 0); golden checks failed (must be 0);
* server RSS: idle (after warm-up) and peak during the attack (``VmHWM``, reset at the start of the
  attack); the peak must stay below idle + 1 GB;
* the well-behaved client's predict p95 without and under attack; goal: under attack <= 2x + 100 ms;
* the largest error reply (must be under 1 KB), replies quoting the marker and "internal error"
  replies, which mean a bug was caught (both must be 0).

Run from the repository root::

    PYTHONPATH=. python bench/hostile.py                       # 50,000 messages
    PYTHONPATH=. python bench/hostile.py --messages 5000 --baseline-s 5
    PYTHONPATH=. python bench/hostile.py --json hostile.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = REPO_ROOT.parent / "shared" / "golden"
CHECKPOINT = GOLDEN / "two_frames_cfg_sinusoidal.pt"
CFG_SCALE = 2.0
MARK = "zz-hostile-zz"
GB = 1 << 30
ALLOWED = ["uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]
BAD_DTYPES = ["object", "O", "|O", "V8", "<U4", "S0", "complex64", "float128", "datetime64", "", MARK, "uint8 ", "u1"]
KINDS = {  # share of each batch
    "wrong_types": 0.25,
    "arrays": 0.15,
    "deep": 0.04,
    "containers": 0.02,
    "mutated": 0.15,
    "random_bytes": 0.05,
    "extreme_valid": 0.03,
    "big_predict": 0.002,
    "multipart": 0.006,
    "takeover": 0.012,
    "never_reads": 0.28,
}


def golden() -> dict[str, np.ndarray]:
    z = np.load(GOLDEN / "two_frames_cfg_sinusoidal.npz")
    return {k: z[k] for k in ("image_0", "image_1", "noise_1", "action_tensor_1")}


def golden_sequence(client: Any, z: dict[str, np.ndarray]) -> tuple[bool, list[float]]:
    """reset, two predicts; True if the second equals the golden actions (history and CFG intact)."""
    client.reset()
    first = client.predict(z["image_0"], noise=z["noise_1"])
    second = client.predict(z["image_1"], noise=z["noise_1"])
    same = bool(np.abs(second.action_tensor - z["action_tensor_1"]).max() <= 1e-4)
    return same, [first.timing_ms["roundtrip_ms"], second.timing_ms["roundtrip_ms"]]


# ------------------------------------------------------------------------------ the generator


class Generator:
    """Seeded, protocol-shaped hostile messages; each is a list of frames for a DEALER."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        r = self.rng
        self.frames = [r.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in r.integers(8, 200, (8, 2))]
        self.valid = [self.request("predict", frame=f, seed=int(i)) for i, f in enumerate(self.frames)]
        self.big = self.encode({"v": 1, "type": "predict", "frame": np.zeros((3200, 3200, 3), np.uint8)})
        self.chunk = b"\x00" * (12 << 20)
        self.thief_ids: set[int] = set()

    def pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    @staticmethod
    def encode(message: Any) -> bytes:
        from nitrogen.serving.protocol import encode

        return encode(message)

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"v": 1, "type": kind, "id": int(self.rng.integers(1 << 30)), **fields}

    def scalar(self) -> Any:
        r = self.rng
        return self.pick(
            [
                None, True, False, 0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, float("nan"), float("inf"), -float("inf"),
                1e308, -1e308, 3e38, -0.0, 5e-324, MARK, MARK * int(r.integers(1, 200)), "", "\u0000" * 3,
                MARK.encode() * int(r.integers(1, 100)), b"", bytes(r.integers(0, 256, int(r.integers(0, 64)), dtype=np.uint8)),
                float(r.standard_normal() * 10.0 ** int(r.integers(-5, 40))), int(r.integers(-(2**62), 2**62)),
            ]
        )  # fmt: skip

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        roll = r.random()
        if depth > 3 or roll < 0.55:
            return self.scalar()
        if roll < 0.7:
            return [self.value(depth + 1) for _ in range(int(r.integers(0, 8)))]
        if roll < 0.85:
            return {self.pick(["v", "type", "frame", "dtype", "shape", "data", MARK, "__nd__"]): self.value(depth + 1)
                    for _ in range(int(r.integers(0, 6)))}  # fmt: skip
        return self.array_spec()

    def array_spec(self) -> dict[str, Any]:
        r = self.rng
        dtype = self.pick(ALLOWED + BAD_DTYPES + [5, None, ["uint8"]])
        shape = self.pick(
            [
                [int(s) for s in r.integers(0, 64, int(r.integers(0, 4)))],
                [8192, 8192, 3], [8193, 1, 3], [2**25] * 4, [2**16] * 4, [2**25, 2**25, 0], [2**40, 1],
                [-1, 3], [1, 1, 1, 1, 1], [True, 3], [1.5, 2], [MARK], None, 7, [2**64 - 1],
            ]
        )  # fmt: skip
        data = self.pick([b"", b"\x00" * int(r.integers(0, 4096)), MARK.encode(), MARK, None, 12, [1, 2]])
        small = isinstance(shape, list) and all(type(s) is int and 0 <= s < 64 for s in shape)
        if r.random() < 0.3 and small and isinstance(dtype, str) and dtype in ALLOWED:  # bytes that fit the shape
            data = b"\x01" * (int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return {"__nd__": self.pick([1, 1, 1, 2, True, "1"]), "dtype": dtype, "shape": shape, "data": data}

    # -- kinds: each returns the frames of one message

    def wrong_types(self) -> list[bytes]:
        message = self.request(self.pick(["predict", "info", "reset", "ping"]), frame=self.pick(self.frames))
        for _ in range(int(self.rng.integers(1, 4))):
            message[self.pick(["v", "type", "id", "token", "frame", "noise", "seed", "game", "cfg_scale", MARK])] = (
                self.value()
            )
        return [b"", msgpack.packb(message, use_bin_type=True, default=self._default)]

    def arrays(self) -> list[bytes]:
        message = self.request("predict", frame=self.pick(self.frames))
        message[self.pick(["frame", "frame", "noise"])] = self.array_spec()
        return [b"", msgpack.packb(message, use_bin_type=True, default=self._default)]

    def deep(self) -> list[bytes]:
        depth = int(self.pick([100, 600, 5000, 200_000]))
        layer = self.pick([b"\x91", b"\x81\xa1a", b"\x92\xc0"])
        head = msgpack.packb({"v": 1, "type": "ping", "x": None})[:-1]  # the map up to the value of "x"
        return [b"", head + layer * depth + b"\xc0"]

    def containers(self) -> list[bytes]:
        r = self.rng
        head = msgpack.packb({"v": 1, "type": "ping", "x": None})[:-1]
        count = int(self.pick([1_000, 100_000, 1_000_000, 30_000_000]))
        if r.random() < 0.5:  # one array of many empty lists or maps
            body = b"\xdd" + count.to_bytes(4, "big") + self.pick([b"\x90", b"\x80"]) * count
        else:  # lists of 60 lists: each within the per-container limit, the whole over it
            body = msgpack.packb([[[] for _ in range(60)] for _ in range(min(count // 60, 5_000))])
        return [b"", head + body]

    def mutated(self) -> list[bytes]:
        raw = bytearray(self.encode(self.pick(self.valid)))
        r = self.rng
        for _ in range(int(r.integers(1, 16))):
            raw[int(r.integers(len(raw)))] = int(r.integers(256))
        if r.random() < 0.5:
            raw = raw[: int(r.integers(len(raw)))]
        return [b"", bytes(raw)]

    def random_bytes(self) -> list[bytes]:
        r = self.rng
        return [b"", bytes(r.integers(0, 256, int(r.integers(0, 2048)), dtype=np.uint8))]

    def extreme_valid(self) -> list[bytes]:
        r = self.rng
        noise = np.full((18, 25), self.pick([1e4, -1e4, 9999.0, 1e5, 3e38]), np.float32)
        message = self.request(
            "predict",
            frame=self.pick(self.frames),
            noise=noise if r.random() < 0.7 else None,
            cfg_scale=self.pick([100.0, -100.0, 99.99, 100.0001, 1e308, 0.0]),
            seed=int(r.integers(0, 2**63 - 1)),
        )
        if message["noise"] is None:
            del message["noise"]
        return [b"", self.encode(message)]

    def big_predict(self) -> list[bytes]:
        return [b"", self.big]

    def multipart(self) -> list[bytes]:
        ping = self.encode(self.request("ping"))
        return self.pick(
            [
                [b"", self.chunk, self.chunk, self.chunk, ping],  # 36 MB in frames of 12 MB
                [b""] * 100 + [ping],
                [b"e" * 10_000, b"", ping],  # an envelope frame to echo
                [self.chunk, b"", ping],
            ]
        )

    def never_reads(self) -> list[bytes]:
        if self.rng.random() < 0.8:
            return [b"", self.encode(self.request("info"))]  # about 40 bytes in, about 6 KB out
        return [b"", self.encode(self.pick(self.valid))]

    def takeover(self) -> list[bytes]:
        message: dict[str, Any] = self.pick(
            [
                self.request("reset"),
                self.request("info"),
                self.request("predict", frame=self.frames[0], cfg_scale=50.0),
                self.request("predict", frame=self.frames[1], cfg_scale=-3.0, game=MARK),
            ]
        )
        self.thief_ids.add(message["id"])
        return [b"", self.encode(message)]

    @staticmethod
    def _default(obj: Any) -> Any:
        from nitrogen.serving.protocol import _pack_default

        return _pack_default(obj)


# -------------------------------------------------------------------------------- processes


def start_server() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "nitrogen.cli", "serve", str(CHECKPOINT), "--port", "0", "--cfg", str(CFG_SCALE),
           "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"tcp://127\.0\.0\.1:\d+", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
            return proc, match.group(0)
    raise RuntimeError("the server did not start")


def status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def good_client_main(address: str) -> None:
    """The well-behaved client process: the golden sequence in a loop until stdin closes."""
    from nitrogen.serving.client import ModelClient

    z = golden()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    records: list[tuple[float, float, bool]] = []
    with ModelClient(address, timeout_s=60, retries=1) as client:
        print("ready", flush=True)
        while not stop.is_set():
            try:
                same, latencies = golden_sequence(client, z)
                records.extend((time.time(), ms, same) for ms in latencies)
            except Exception:  # noqa: BLE001 - a failed request is a result here
                records.append((time.time(), float("nan"), False))
    print(json.dumps(records), flush=True)


@dataclass
class Result:
    messages: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    golden_checks: int = 0
    golden_failures: int = 0
    takeover_replies: int = 0
    replies: int = 0
    error_replies: int = 0
    internal_errors: int = 0
    largest_error_reply: int = 0
    marker_quoted: int = 0
    send_timeouts: int = 0
    idle_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    baseline_p50_ms: float = 0.0
    baseline_p95_ms: float = 0.0
    attack_p50_ms: float = 0.0
    attack_p95_ms: float = 0.0
    good_requests_baseline: int = 0
    good_requests_attack: int = 0
    good_failures: int = 0
    attack_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)


def dealer(ctx: zmq.Context, address: str, identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.SNDTIMEO, 60_000)
    sock.connect(address)
    return sock


def run(messages: int, batch: int, seed: int, baseline_s: float, flood_every: int) -> Result:
    from machine import machine_info  # bench/machine.py (this folder is on sys.path)

    from nitrogen.serving.client import ModelClient
    from nitrogen.serving.protocol import REPLY_LIMITS, decode, encode

    result = Result(machine=machine_info())
    z = golden()
    server, address = start_server()
    ctx = zmq.Context()
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    good = subprocess.Popen([sys.executable, __file__, "--good-client", address], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert good.stdin is not None and good.stdout is not None
    check = ModelClient(address, client_id=b"golden-check", timeout_s=60, retries=1)
    try:
        assert good.stdout.readline().strip() == "ready"
        assert golden_sequence(check, z)[0], "the golden sequence fails without any attack"
        baseline_start = time.time()
        time.sleep(baseline_s)  # the well-behaved client runs alone
        attack_start = time.time()
        result.idle_rss_mb = status_kb(server.pid, "VmRSS") / 1024
        try:
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak is the attack's
        except OSError:
            pass
        peak = [result.idle_rss_mb]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                try:
                    peak[0] = max(peak[0], status_kb(server.pid, "VmRSS") / 1024)
                except (OSError, KeyError):
                    return

        threading.Thread(target=sample, daemon=True).start()
        gen = Generator(seed)
        main = dealer(ctx, address, b"hostile-main")
        mute = [dealer(ctx, address, f"mute-{k}".encode()) for k in range(4)]
        thief = dealer(ctx, address, b"golden-check")  # the check client's routing id
        flood: list[zmq.Socket] = []
        names = list(KINDS)
        weights = np.array([KINDS[k] for k in names])
        sent = 0
        batch_index = 0

        def drain() -> None:
            while main.poll(0):
                raw = main.recv_multipart()
                result.replies += 1
                reply = decode(raw[-1], limits=REPLY_LIMITS)
                reply.pop("id", None)  # a short id (up to 64 characters) is echoed by design
                if MARK.encode() in encode(reply) + b"".join(raw[:-1]):
                    result.marker_quoted += 1
                if reply.get("status") == "error":
                    result.error_replies += 1
                    result.internal_errors += str(reply.get("error")).startswith(("internal", "inference failed"))
                    result.largest_error_reply = max(result.largest_error_reply, sum(len(f) for f in raw))

        while sent < messages:
            batch_index += 1
            if flood_every and batch_index % flood_every == 0:
                for sock in flood:
                    sock.close()
                flood = [dealer(ctx, address, b"flood-%d-%d" % (batch_index, k)) for k in range(300)]
                for sock in flood:
                    sock.send_multipart([b"", gen.encode(gen.request("info"))])
                sent += len(flood)
                result.by_kind["identity_flood"] = result.by_kind.get("identity_flood", 0) + len(flood)
            kinds = gen.rng.choice(len(names), size=batch, p=weights / weights.sum())
            for k in kinds:
                kind = names[k]
                frames = getattr(gen, kind)()
                sock = {"takeover": thief, "never_reads": mute[sent % len(mute)]}.get(kind, main)
                try:
                    sock.send_multipart(frames, copy=sum(map(len, frames)) < 65536)
                except zmq.Again:
                    result.send_timeouts += 1
                sent += 1
                result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
                drain()
            if server.poll() is not None:
                result.crashes += 1
                break
            result.golden_checks += 1
            try:
                same, _ = golden_sequence(check, z)
            except Exception as exc:  # noqa: BLE001 - a failed check is a result here
                print(f"golden check failed: {exc}", file=sys.stderr)
                same = False
            result.golden_failures += not same
            print(f"batch {batch_index}: {sent} messages, server RSS {status_kb(server.pid, 'VmRSS') / 1024:.0f} MB, "
                  f"golden {'ok' if same else 'FAILED'}", file=sys.stderr, flush=True)  # fmt: skip
        result.attack_s = time.time() - attack_start
        attack_end = time.time()
        sampling.set()
        drain()
        while thief.poll(200):  # the thief's own requests may be answered; the check client's never
            reply = decode(thief.recv_multipart()[-1], limits=REPLY_LIMITS)
            result.takeover_replies += reply.get("id") not in gen.thief_ids
        result.messages = sent
        if server.poll() is None:
            peak[0] = max(peak[0], status_kb(server.pid, "VmHWM") / 1024)
        result.peak_rss_mb = peak[0]
        good.stdin.close()
        records = json.loads(good.stdout.readline())
        good.wait(60)
        for name, (start, end) in {
            "baseline": (baseline_start, attack_start),
            "attack": (attack_start, attack_end),
        }.items():
            window = [(ms, same) for t, ms, same in records if start <= t < end]
            latencies = [ms for ms, _ in window if np.isfinite(ms)]
            setattr(result, f"{name}_p50_ms", float(np.percentile(latencies, 50)) if latencies else float("nan"))
            setattr(result, f"{name}_p95_ms", float(np.percentile(latencies, 95)) if latencies else float("nan"))
            setattr(result, f"good_requests_{name}", len(window))
            result.good_failures += sum(not same for _, same in window)
        for sock in [main, thief, *mute, *flood]:
            sock.close()
    finally:
        check.close()
        if good.poll() is None:
            good.kill()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        ctx.destroy(linger=0)
    return result


def report(r: Result) -> bool:
    m = r.machine
    print(
        f"\nmachine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, torch {m.get('torch')}, python {m.get('python')}"
    )
    print(f"server: nitrogen serve {CHECKPOINT.name} --cfg {CFG_SCALE} (defaults otherwise), in a child process\n")
    print("| kind | messages |\n|---|---:|")
    for kind, count in sorted(r.by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {count:,} |")
    budget = 2 * r.baseline_p95_ms + 100
    checks = [
        ("messages sent", f"{r.messages:,}", r.messages >= 50_000 or None),
        ("server crashes", str(r.crashes), r.crashes == 0),
        ("golden checks failed (after every batch)", f"{r.golden_failures} of {r.golden_checks}", r.golden_failures == 0),
        ("well-behaved client: wrong or failed", f"{r.good_failures} of {r.good_requests_baseline + r.good_requests_attack}",
         r.good_failures == 0),
        ("golden-check replies received by a thief of its routing id", str(r.takeover_replies), r.takeover_replies == 0),
        ("server idle RSS", f"{r.idle_rss_mb:.0f} MB", None),
        ("server peak RSS under attack", f"{r.peak_rss_mb:.0f} MB (+{r.peak_rss_mb - r.idle_rss_mb:.0f} MB)",
         r.peak_rss_mb < r.idle_rss_mb + GB / 2**20),
        ("largest error reply", f"{r.largest_error_reply} bytes", r.largest_error_reply < 1024),
        ("internal errors (a bug answered as 'internal error')", str(r.internal_errors), r.internal_errors == 0),
        ("replies quoting the marker", str(r.marker_quoted), r.marker_quoted == 0),
        ("well-behaved p50 / p95, no attack", f"{r.baseline_p50_ms:.1f} / {r.baseline_p95_ms:.1f} ms", None),
        ("well-behaved p50 / p95, under attack", f"{r.attack_p50_ms:.1f} / {r.attack_p95_ms:.1f} ms "
         + f"(goal <= {budget:.0f} ms)", r.attack_p95_ms <= budget),
        ("attack duration", f"{r.attack_s:.0f} s ({r.replies:,} replies read, {r.error_replies:,} errors)", None),
    ]  # fmt: skip
    print("\n| measure | value | verdict |\n|---|---|---|")
    for name, value, verdict in checks:
        mark = "" if verdict is None else ("pass" if verdict else "FAIL")
        print(f"| {name} | {value} | {mark} |")
    return all(v is not False for _, _, v in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000, help="hostile messages between two golden checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-s", type=float, default=20.0)
    parser.add_argument(
        "--flood-every", type=int, default=5, help="a flood of 300 identities every N batches (0: never)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--good-client", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.good_client:
        good_client_main(args.good_client)
        return 0
    result = run(args.messages, args.batch, args.seed, args.baseline_s, args.flood_every)
    passed = report(result)
    if args.json:
        from nitrogen.atomic import atomic_write_json

        atomic_write_json(args.json, asdict(result))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
