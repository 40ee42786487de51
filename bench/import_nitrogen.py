"""Decode throughput of `nitrogen data import-nitrogen` on 1280x720 H.264, per core and with --workers.

Run from the repository root::

    PYTHONPATH=. python bench/import_nitrogen.py              # a 10 s 720p60 video, 2 chunks of 5 s

It encodes a synthetic 1280x720 60 fps H.264 video (moving shapes on a gradient, libx264 veryfast,
crf 23; about a gameplay upload's bitrate), then measures, on one core:

* decode alone (PyAV, one decoder thread): frames/s;
* decode + RGB conversion (``to_ndarray``), what every imported row needs;
* the whole import of a release of that video (mask, crop, INTER_AREA to 256, PNG, parquet), rows/s,
  with ``--workers 1`` and ``--workers N``; and how much of the per-row time decoding takes.
"""

from __future__ import annotations

import argparse
import json
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


def decode_rate(path: Path, convert: bool) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        n, t0 = 0, time.perf_counter()
        for frame in container.decode(stream):
            if convert:
                frame.to_ndarray(format="rgb24")
            n += 1
        return n / (time.perf_counter() - t0)


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
            report = import_nitrogen(ImportConfig(actions=actions, videos=videos, out=out, workers=workers))
            run = report["this_run"]
            per_row_s = (run["decode_s"] + run["convert_s"]) / max(run["rows_written"], 1)
            result[f"workers_{workers}"] = {
                "rows": run["rows_written"],
                "wall_s": run["wall_s"],
                "rows_per_s": run["rows_per_s"],
                "decode_frames_per_s_per_worker": run["decode_frames_per_s_per_worker"],
                "decode_share_of_row_time": round(run["decode_s"] / max(per_row_s * run["rows_written"], 1e-9), 3),
            }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
