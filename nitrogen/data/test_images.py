"""Hostile image cells in a real parquet written by ``datasets``: paths, bombs and garbage.

Training reads image bytes only: a cell with only a path is a corrupt row unless an image root is
given, and then its relative path must stay inside that root. Images are checked against a pixel
budget on their header, before decoding; undecodable ones are the same one-line row error.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nitrogen.data import CorruptRowError, GameplayDataset, ImageReader, MappingConfig, load_gameplay
from nitrogen.inference.preprocessing import resize_frame, to_pixels

NO_ACTIONS = MappingConfig(buttons={}, j_left=None, j_right=None)  # image cells only
ONE_ROW_WINDOWS = {"action_shift": 0, "action_horizon": 1}  # window i is row i


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of zeros, written chunk by chunk: tiny on disk, ``width * height`` pixels
    once decoded (PIL holds mode 1 at a byte per pixel, RGB at four)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    idat += packer.compress(row * (height % 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)  # the frame of row 0 and of ok.png
OUTSIDE = np.full((20, 30, 3), 200, dtype=np.uint8)  # a real image outside every image root
# (row, what the cell holds, reason with no image root, reason with the image root; None: decoded)
CELLS: list[tuple[int, str, str, str | None]] = [
    (0, "png bytes", "", ""),
    (1, "path ../../outside.png, relative to the working folder", "only a path", "resolves outside"),
    (2, "path /etc/passwd", "only a path", "absolute"),
    (3, "path frames/ok.png, inside the image root", "only a path", ""),
    (4, "path escape.png, a symlink in the root to outside.png", "only a path", "resolves outside"),
    (5, "path frames/../../../outside.png", "only a path", "resolves outside"),
    (6, "absolute path of the root's frames/ok.png", "only a path", "absolute"),
    (7, "bytes that are not an image", "undecodable image", "undecodable image"),
    (8, "a truncated PNG", "undecodable image", "undecodable image"),
    (9, "a 12000x12000 PNG of zeros (144 Mpx in a few KB)", "exceeds the budget", "exceeds the budget"),
    (10, "an 8000x8000 PNG of zeros (64 Mpx)", "exceeds the budget", "exceeds the budget"),
    (11, "EPS bytes (PIL would run Ghostscript)", "undecodable image", "undecodable image"),
    (12, "png bytes and the path /etc/passwd", "", ""),
    (13, "path frames/missing.png", "only a path", "cannot be resolved"),
    (14, "a 9000x100 PNG (a side over MAX_FRAME_SIDE)", "8192-pixel limit per side", "8192-pixel limit per side"),
]
BAD_WITHOUT_ROOT = {row for row, _, plain, _ in CELLS if plain}
BAD_WITH_ROOT = {row for row, _, _, rooted in CELLS if rooted}
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``parquet``: the cells above; ``root``: the image root; ``cwd``: the folder where
    ``../../outside.png`` is the real outside image."""
    import datasets

    base = tmp_path_factory.mktemp("hostile")
    Image.fromarray(OUTSIDE).save(base / "outside.png")
    root, cwd = base / "data" / "images", base / "data" / "work"
    (root / "frames").mkdir(parents=True)
    cwd.mkdir()
    Image.fromarray(GOOD).save(root / "frames" / "ok.png")
    (root / "escape.png").symlink_to(base / "outside.png")
    png = _png(GOOD)
    cells: list[dict[str, Any]] = [
        {"bytes": png, "path": None},
        {"bytes": None, "path": "../../outside.png"},
        {"bytes": None, "path": "/etc/passwd"},
        {"bytes": None, "path": "frames/ok.png"},
        {"bytes": None, "path": "escape.png"},
        {"bytes": None, "path": "frames/../../../outside.png"},
        {"bytes": None, "path": str(root / "frames" / "ok.png")},
        {"bytes": b"\x89PNG not really an image", "path": None},
        {"bytes": png[: len(png) // 2], "path": None},
        {"bytes": _png_bomb(12000, 12000), "path": None},
        {"bytes": _png_bomb(8000, 8000), "path": None},
        {"bytes": EPS, "path": None},
        {"bytes": png, "path": "/etc/passwd"},
        {"bytes": None, "path": "frames/missing.png"},
        {"bytes": _png_bomb(9000, 100), "path": None},
    ]
    assert len(cells) == len(CELLS)
    table = datasets.Dataset.from_dict({"image": cells}).cast_column("image", datasets.Image())
    # batch_size: without it `datasets` stats every path-only cell to size its batches.
    table.to_parquet(str(base / "hostile.parquet"), batch_size=len(cells))
    return {"parquet": base / "hostile.parquet", "root": root, "cwd": cwd, "base": base}


@pytest.fixture
def in_cwd(hostile, monkeypatch):
    monkeypatch.chdir(hostile["cwd"])  # where a relative path would be opened from by a naive reader
    return hostile


def _dataset(hostile, tmp_path, **kwargs: Any) -> GameplayDataset:
    hf = load_gameplay(hostile["parquet"], cache_dir=str(tmp_path / "hf"))
    return GameplayDataset(hf, mapping=NO_ACTIONS, image_size=32, **ONE_ROW_WINDOWS, **kwargs)


def _pixels_of(frame: np.ndarray) -> torch.Tensor:
    return to_pixels(resize_frame(frame, 32)[None])[0]


def test_the_bombs_are_small_and_say_their_size_in_the_header():
    # PIL only warns about the 144-Mpx one.
    with pytest.warns(Image.DecompressionBombWarning), Image.open(io.BytesIO(_png_bomb(12000, 12000))) as img:
        assert img.size == (12000, 12000) and img.format == "PNG"
    with Image.open(io.BytesIO(_png_bomb(8000, 8000))) as img:
        assert img.size == (8000, 8000)
    assert max(len(_png_bomb(12000, 12000)), len(_png_bomb(8000, 8000))) < 200_000


@pytest.mark.parametrize(("row", "cell", "reason"), [(r, c, p) for r, c, p, _ in CELLS])
def test_without_an_image_root_only_bytes_are_read(in_cwd, tmp_path, row, cell, reason):
    ds = _dataset(in_cwd, tmp_path)
    if not reason:
        torch.testing.assert_close(ds[row]["pixels"][0], _pixels_of(GOOD), rtol=0, atol=0)
        return
    with pytest.raises(CorruptRowError, match=rf"^corrupt row {row}, column 'image': ") as info:
        ds[row]
    assert info.value.row_index == row and info.value.column == "image", cell
    assert reason in info.value.reason, cell
    assert "\n" not in str(info.value) and len(str(info.value)) < 400  # one line


@pytest.mark.parametrize(("row", "cell", "reason"), [(r, c, p) for r, c, _, p in CELLS])
def test_with_an_image_root_relative_paths_are_read_inside_it_only(in_cwd, tmp_path, row, cell, reason):
    ds = _dataset(in_cwd, tmp_path, image_root=in_cwd["root"])
    if not reason:
        torch.testing.assert_close(ds[row]["pixels"][0], _pixels_of(GOOD), rtol=0, atol=0)
        return
    with pytest.raises(CorruptRowError, match=rf"^corrupt row {row}, column 'image': ") as info:
        ds[row]
    assert reason in info.value.reason, cell


def test_skip_bad_skips_every_refused_cell(in_cwd, tmp_path):
    for kwargs, bad in (({}, BAD_WITHOUT_ROOT), ({"image_root": in_cwd["root"]}, BAD_WITH_ROOT)):
        ds = _dataset(in_cwd, tmp_path, skip_bad=True, **kwargs)
        for i in range(len(ds)):
            item = ds[i]
            assert int(item["index"]) not in bad
            torch.testing.assert_close(item["pixels"][0], _pixels_of(GOOD), rtol=0, atol=0)
        assert set(ds.bad_rows) == bad
        assert all(err.column == "image" for err in ds.bad_rows.values())


def test_the_frame_cache_decodes_through_the_same_reader(in_cwd, tmp_path):
    cache = tmp_path / "frames"
    with pytest.raises(CorruptRowError, match=r"^corrupt row 1, column 'image': .*only a path"):
        _dataset(in_cwd, tmp_path, cache_dir=cache)  # built up front: the first refused row stops it
    rooted = _dataset(in_cwd, tmp_path, cache_dir=cache, skip_bad=True, image_root=in_cwd["root"])
    assert set(rooted.bad_rows) == BAD_WITH_ROOT and not rooted.cache_reused
    (frames,) = cache.glob("*.npy")
    assert json.loads(frames.with_suffix(".bad.json").read_text()) == sorted(BAD_WITH_ROOT)
    np.testing.assert_array_equal(np.load(frames)[3], resize_frame(GOOD, 32))  # frames/ok.png, read in the root
    # The same data without the root is another cache: the frame read through the root is not reused.
    plain = _dataset(in_cwd, tmp_path, cache_dir=cache, skip_bad=True)
    assert not plain.cache_reused and set(plain.bad_rows) == BAD_WITHOUT_ROOT
    assert len(list(cache.glob("*.npy"))) == 2


def test_the_pixel_budget_is_configurable_and_checked(in_cwd, tmp_path):
    ds = _dataset(in_cwd, tmp_path, max_image_pixels=20 * 30 - 1)
    with pytest.raises(CorruptRowError, match=r"corrupt row 0, .*image of 30x20 \(600 pixels\) exceeds the budget"):
        ds[0]
    with pytest.raises(ValueError, match="max_pixels"):
        ImageReader(max_pixels=0)
    with pytest.raises(ValueError, match="not a folder"):
        ImageReader(image_root=in_cwd["base"] / "hostile.parquet")


def test_the_reader_refuses_fifos_and_takes_arrays_and_pil_images_through_the_frame_check(in_cwd):
    fifo = in_cwd["root"] / "pipe.png"
    os.mkfifo(fifo)
    try:
        with pytest.raises(ValueError, match="not a regular file"):  # refused at once, not waiting for a writer
            ImageReader(image_root=in_cwd["root"]).read("pipe.png")
    finally:
        fifo.unlink()
    reader = ImageReader()
    np.testing.assert_array_equal(reader.read(GOOD), GOOD)
    np.testing.assert_array_equal(reader.read(Image.fromarray(GOOD)), GOOD)
    with pytest.raises(ValueError, match="dtype uint8"):
        reader.read(GOOD.astype(np.float32))
    with pytest.raises(ValueError, match="exceeds the budget"):
        ImageReader(max_pixels=10).read(Image.fromarray(GOOD))
    with pytest.raises(ValueError, match="neither bytes nor path"):
        reader.read({"bytes": None, "path": None})


CHILD = r"""
import json, sys
from pathlib import Path

opened = []
targets = ("outside.png", "/etc/passwd", "ok.png")
def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, Path)) and any(t in str(args[0]) for t in targets):
        opened.append(str(args[0]))

from nitrogen.data import CorruptRowError, GameplayDataset, MappingConfig, load_gameplay

def hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

parquet, hf_cache, root = sys.argv[1:4]
windows = {"action_shift": 0, "action_horizon": 1, "image_size": 32}
mapping = MappingConfig(buttons={}, j_left=None, j_right=None)
plain = GameplayDataset(load_gameplay(parquet, cache_dir=hf_cache), mapping=mapping, **windows)
rooted = GameplayDataset(load_gameplay(parquet, cache_dir=hf_cache), mapping=mapping, image_root=root, **windows)
plain[0], rooted[0]  # warm up: first decode, lazily imported modules
sys.addaudithook(audit)
before = hwm_kib()
errors = {}
for name, ds in (("plain", plain), ("rooted", rooted)):
    for row in range(len(ds)):
        try:
            ds[row]
        except CorruptRowError as err:
            errors[f"{name} {row}"] = err.reason
print(json.dumps({"grown_kib": hwm_kib() - before, "opened": opened, "errors": errors}))
"""


def test_hostile_cells_cost_no_memory_and_open_no_file_outside_the_root(in_cwd, tmp_path):
    """In a fresh process: decoding every hostile cell (the 144-Mpx bomb cost 1.4 GB before) grows
    the peak RSS by under 64 MiB, and the only file opened is the one inside the image root."""
    import nitrogen

    args = [sys.executable, "-c", CHILD, str(in_cwd["parquet"]), str(tmp_path / "hf"), str(in_cwd["root"])]
    here = str(Path(nitrogen.__file__).parents[1])  # this checkout's package, whatever the working folder
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=in_cwd["cwd"], env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["grown_kib"] < 64 * 1024, report
    assert report["opened"] == [str(in_cwd["root"] / "frames" / "ok.png")], report["opened"]
    assert {int(k.split()[1]) for k in report["errors"] if k.startswith("plain")} == BAD_WITHOUT_ROOT
    assert {int(k.split()[1]) for k in report["errors"] if k.startswith("rooted")} == BAD_WITH_ROOT
