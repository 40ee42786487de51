"""Decode throughput of `nitrogen data import-nitrogen` on 1280x720 H.264, per core and with --workers.

Run from the repository root::

    PYTHONPATH=. python bench/import_nitrogen.py              # a 10 s 720p60 video, 2 chunks of 5 s

It encodes a synthetic 1280x720 60 fps H.264 video (moving shapes on a textured gradient, libx264
veryfast, crf 23: about 3-4 Mbit/s, a 720p gameplay upload's bitrate), then measures:

* decode alone (PyAV, one decoder thread) and decode + RGB conversion (``to_ndarray``), in frames
  per CPU-second, i.e. per core;
* the whole import of a release of that video (decode, mask, crop, INTER_AREA to 256, PNG,
  parquet) with ``--workers 1`` and ``--workers N``: rows per CPU-second (the parent's and the
  workers' CPU time, from ``getrusage``), rows per wall second, and the split of the per-row CPU
  time between decoding and converting (the importer's own ``decode_s``/``convert_s``), each
  decoder on one thread so that the split is clean.

CPU time, not wall time, is the per-core figure: on a shared machine it barely moves with the
load, which wall-clock throughput does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from machine import machine_info  # bench/machine.py (this folder is on sys.path)

from nitrogen.data.nitrogen_import import ImportConfig, import_nitrogen

W, H, FPS = 1280, 720, 60


def encode(path: Path, seconds: float) -> None:
    import av

    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([(xx * 255 // W), (yy * 255 // H), ((xx + yy) * 255 // (W + H))], axis=-1).astype(np.uint8)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for n in range(int(seconds * FPS)):
            img = base.copy()
            for k in range(12):  # moving sprites
                x = int((n * (3 + k) + 97 * k) % (W - 80))
                y = int((200 + 150 * np.sin(n / (20 + k) + k)) % (H - 80))
                img[y : y + 80, x : x + 80] = (40 * k % 255, 255 - 20 * k, 90)
            img[::16, ::16] = rng.integers(0, 255, img[::16, ::16].shape, dtype=np.uint8)  # texture
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def cpu_s() -> float:
    """CPU seconds of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def decode_rate(path: Path, convert: bool) -> float:
    """Frames per CPU-second, one decoder thread."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        n, t0 = 0, time.process_time()
        for frame in container.decode(stream):
            if convert:
                frame.to_ndarray(format="rgb24")
            n += 1
        return n / (time.process_time() - t0)


def release(root: Path, seconds: float, chunk_s: float) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nitrogen.data import BUTTON_COLUMNS

    rows = int(chunk_s * 60)
    rng = np.random.default_rng(0)
    for k in range(int(seconds // chunk_s)):
        folder = root / "actions" / "SHARD_0000" / "bench" / f"bench_chunk_{k:04d}"
        folder.mkdir(parents=True)
        cols = {c: (rng.random(rows) < 0.2).tolist() for c in BUTTON_COLUMNS}
        cols |= {s: rng.uniform(-1, 1, (rows, 2)).tolist() for s in ("j_left", "j_right")}
        pq.write_table(pa.table(cols), folder / "actions_raw.parquet")
        meta = {
            "chunk_id": k,
            "original_video": {"video_id": "bench", "resolution": [1080, 1920], "start_time": k * chunk_s},
            "game": "bench",
            "bbox_controller_overlay": [1500, 800, 380, 240],
            "bbox_game_area": {"xtl": 0.05, "ytl": 0.0, "xbr": 0.95, "ybr": 1.0},
        }
        (folder / "metadata.json").write_text(json.dumps(meta))
    return root / "actions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chunk-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(machine_info()), file=sys.stderr)
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = root / "videos"
        videos.mkdir()
        video = videos / "bench.mp4"
        encode(video, args.seconds)
        actions = release(root, args.seconds, args.chunk_seconds)
        result = {
            "video": f"{W}x{H} {FPS} fps H.264, {args.seconds:g} s, {video.stat().st_size / args.seconds * 8 / 1e6:.1f} Mbit/s",
            "decode_fps_1_thread": round(decode_rate(video, convert=False), 1),
            "decode_rgb_fps_1_thread": round(decode_rate(video, convert=True), 1),
        }
        for workers in sorted({1, args.workers}):
            out = root / f"out{workers}"
            c0 = cpu_s()
            cfg = ImportConfig(actions=actions, videos=videos, out=out, workers=workers, decoder_threads=1)
            report = import_nitrogen(cfg)
            cpu = cpu_s() - c0
            run = report["this_run"]
            rows = run["rows_written"]
            result[f"workers_{workers}"] = {
                "rows": rows,
                "cpu_s": round(cpu, 2),
                "rows_per_cpu_s": round(rows / cpu, 1),
                "wall_s": run["wall_s"],
                "rows_per_wall_s": run["rows_per_s"],
                "decode_ms_per_row": round(1e3 * run["decode_s"] / rows, 2),
                "convert_ms_per_row": round(1e3 * run["convert_s"] / rows, 2),
                "other_ms_per_row": round(1e3 * (cpu - run["decode_s"] - run["convert_s"]) / rows, 2)
                if workers == 1
                else None,
            }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
