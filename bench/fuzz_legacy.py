"""Fuzzing the legacy (pickled) message path: generated hostile messages, loaded in a child process.

Every message comes from ``hostile_pickles()`` of ``nitrogen/serving/test_legacy.py``, the generator
the test suite runs on a few hundred examples: pickles written from the admitted opcodes and globals
(and some refused ones), shaped like what numpy and PIL write (dtypes with forged, structured and
subarray states, arrays by ``_reconstruct`` and ``_frombuffer`` with odd shapes and buffers,
scalars, images with odd modes, sizes and palettes, memo puts and gets, REDUCE, BUILD and NEWOBJ on
anything, code-running globals), and real pickles of real requests with bytes flipped, cut,
inserted and names swapped.

A child process (``LegacyWorker``) loads each message with ``safe_loads`` and
``parse_legacy_request``, checks that what came out is plain data and reads every byte of it, and
reports the peak of its RSS during each load (VmHWM, reset before every message). A crash or a hang
of the child is counted, its payload saved, and a fresh child started. After every batch, the
well-behaved messages of the original client (a uint8 frame as an ndarray and as a PIL RGB image,
pickle protocols 2 to 5, and reset and info) must parse to exactly the frame that was sent.

Columns:

* **messages**: generated hostile messages; **accepted**: ``safe_loads`` returned plain data (of which
  **requests**: ``parse_legacy_request`` also accepted it); **refused**: a ``LegacyPickleError``;
* **crashes**, **hangs**, **errors** (any other exception), **code ran** (the marker file that the
  code-running payloads would create appeared): each must be 0;
* **well-behaved ok**: good messages that parsed to the frame sent, of those sent;
* **max peak MB**: the largest RSS peak of one load above the RSS before it; **RSS growth MB**: the
  child's RSS at the end minus after warm-up (a leak would show here);
* **time s**, **msg/s**: wall time of the whole run, generation included.

Usage: ``python bench/fuzz_legacy.py [--messages 25000] [--batch 500] [--seed 0] [--json out.json]``
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
import PIL
from hypothesis import HealthCheck, Phase, given, seed, settings
from machine import machine_info  # bench/machine.py (this folder is on sys.path)
from PIL import Image

from nitrogen.atomic import atomic_write_json
from nitrogen.serving.test_legacy import FUZZ_PEAK_MB, LegacyWorker, hostile_pickles, outcome

BAD_OUTCOMES = ("crash", "hang", "error", "code ran")


@dataclass
class FuzzResult:
    messages: int = 0
    accepted: int = 0
    requests: int = 0
    refused: int = 0
    crashes: int = 0
    hangs: int = 0
    errors: int = 0
    code_ran: int = 0
    good_ok: int = 0
    good_sent: int = 0
    max_peak_mb: float = 0.0
    rss_growth_mb: float = 0.0
    seconds: float = 0.0
    worker_starts: int = 0

    @property
    def clean(self) -> bool:
        bad = self.crashes + self.hangs + self.errors + self.code_ran
        return bad == 0 and self.good_ok == self.good_sent and self.max_peak_mb < FUZZ_PEAK_MB


def well_behaved_messages() -> list[tuple[bytes, Any]]:
    """What the original client sends, with the frame each predict must parse to (None for reset/info)."""
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = [list(frame.shape), hashlib.sha1(frame.tobytes()).hexdigest()]
    messages: list[tuple[bytes, Any]] = []
    for protocol in (2, 3, 4, 5):
        for image in (frame, Image.fromarray(frame)):
            messages.append((pickle.dumps({"type": "predict", "image": image}, protocol=protocol), expected))
        messages.append((pickle.dumps({"type": "reset"}, protocol=protocol), None))
        messages.append((pickle.dumps({"type": "info"}, protocol=protocol), None))
    return messages


def check_well_behaved(worker: LegacyWorker, result: FuzzResult, good: list[tuple[bytes, Any]]) -> None:
    for payload, expected in good:
        report = worker.check(payload)
        result.good_sent += 1
        parsed = report.get("parse_legacy_request", {})
        if outcome(report) == "accepted" and parsed.get("outcome") == "accepted" and parsed.get("frame") == expected:
            result.good_ok += 1


def run_fuzz(messages: int, batch: int, seed_value: int, crash_dir: Path) -> tuple[FuzzResult, Counter[str]]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-legacy-"))
    worker = LegacyWorker(folder)
    result, refusals = FuzzResult(), Counter[str]()
    good = well_behaved_messages()
    check_well_behaved(worker, result, good)  # warm-up: imports, first allocations
    base_rss = worker.check(good[0][0])["rss_mb"]
    last_rss = base_rss
    t0 = time.perf_counter()

    @seed(seed_value)
    @settings(
        max_examples=messages,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=hostile_pickles())
    def one(payload: bytes) -> None:
        nonlocal last_rss
        report = worker.check(payload)
        kind = outcome(report)
        result.messages += 1
        if kind == "accepted":
            result.accepted += 1
            result.requests += report["parse_legacy_request"]["outcome"] == "accepted"
        elif kind == "refused":
            result.refused += 1
            refusals[report["safe_loads"]["message"].split(":")[0][:60]] += 1
        else:
            field = {"crash": "crashes", "hang": "hangs", "error": "errors", "code ran": "code_ran"}[kind]
            setattr(result, field, getattr(result, field) + 1)
            crash_dir.mkdir(parents=True, exist_ok=True)
            saved = crash_dir / f"{kind.replace(' ', '_')}-{result.messages:06d}.pickle"
            saved.write_bytes(payload)
            print(f"  {kind}: {str(report)[:300]} (payload in {saved})", file=sys.stderr, flush=True)
        if "rss_mb" in report:
            last_rss = report["rss_mb"]
            for load in ("safe_loads", "parse_legacy_request"):
                result.max_peak_mb = max(result.max_peak_mb, report[load]["peak_mb"])
        if result.messages % batch == 0:
            check_well_behaved(worker, result, good)
            print(
                f"  {result.messages} messages, {result.refused} refused, {result.crashes} crashes "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    one()
    check_well_behaved(worker, result, good)
    result.seconds = time.perf_counter() - t0
    result.rss_growth_mb = last_rss - base_rss
    result.worker_starts = worker.starts
    worker.close()
    return result, refusals


def format_result(r: FuzzResult) -> str:
    header = (
        "| messages | accepted | requests | refused | crashes | hangs | errors | code ran | well-behaved ok "
        "| max peak MB | RSS growth MB | time s | msg/s |"
    )
    rule = "|" + "|".join("---:" for _ in range(13)) + "|"
    row = (
        f"| {r.messages} | {r.accepted} | {r.requests} | {r.refused} | {r.crashes} | {r.hangs} | {r.errors} "
        f"| {r.code_ran} | {r.good_ok}/{r.good_sent} | {r.max_peak_mb:.1f} | {r.rss_growth_mb:.1f} "
        f"| {r.seconds:.0f} | {r.messages / max(r.seconds, 1e-9):.0f} |"
    )
    return f"{header}\n{rule}\n{row}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=25_000, help="generated hostile messages (default 25000)")
    parser.add_argument("--batch", type=int, default=500, help="well-behaved messages are checked every N (500)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-legacy-crashes"), help="where bad payloads go")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.batch < 1:
        parser.error("--messages and --batch must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    info.update(numpy=np.__version__, pillow=PIL.__version__, hypothesis=hypothesis.__version__)
    print("## NitroGen legacy pickle fuzzing\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"\n{args.messages} generated messages, seed {args.seed}; well-behaved messages every {args.batch}\n")
    sys.stdout.flush()
    result, refusals = run_fuzz(args.messages, args.batch, args.seed, args.crash_dir)
    print(format_result(result))
    print("\nMost common refusals:\n")
    for reason, count in refusals.most_common(12):
        print(f"- {count}: {reason}")
    print(f"\nverdict: {'clean' if result.clean else 'NOT clean'} (worker started {result.worker_starts} time(s))")
    if args.json is not None:
        payload = {"machine": info, "seed": args.seed, "result": asdict(result), "refusals": dict(refusals)}
        atomic_write_json(args.json, payload)
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
