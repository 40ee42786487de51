"""Import the released NitroGen dataset (action labels) with the user's own videos as fine-tuning data.

The release (``nvidia/NitroGen`` on the hub) has no pixels: it holds, per 20 s chunk of a public
gameplay video, the controller state of every 60 Hz frame. Its layout::

    actions/SHARD_0000/<video_id>/<video_id>_chunk_0000/actions_raw.parquet
                                                       /actions_processed.parquet   (optional)
                                                       /metadata.json
    actions/SHARD_0000.tar.gz                                                       (the same, packed)

:func:`import_nitrogen` turns it, with a folder of downloaded videos (``<video_id>.mp4|webm|mkv``,
or any names through a mapping file), into parquet shards in the fine-tuning schema that
``nitrogen finetune --data OUT`` reads unchanged. Per chunk:

* **Alignment by presentation time.** Row ``i`` is at ``start_time + i/60`` (there is no fps field:
  rows are 60 Hz). It takes the video frame *shown* at that time, the last frame whose timestamp
  is at or before it, so a 30 fps or variable-rate download aligns as well as a 60 fps one. The
  video is opened once per task and seeked (PyAV) to each chunk's start.
* **Game area, overlay, size.** ``bbox_controller_overlay`` (``[x, y, w, h]`` in pixels of the
  original video, scaled to the download's real resolution when they differ in size but not in
  shape) is painted black first: the overlay shows the very actions being predicted. Then the
  optional ``bbox_game_area`` (fractions ``xtl ytl xbr ybr``) is cropped, and the frame is squashed
  to ``image_size`` with ``INTER_AREA`` by :func:`nitrogen.inference.preprocessing.resize_frame`,
  the one resize of play and training.
* **Actions** go through the one mapping (:class:`~nitrogen.data.schema.ActionMapper`, hence
  :func:`nitrogen.gamepad.pack_pad`): a bad cell skips the chunk, naming the row and column.
* **Idle rows.** A row is idle when no button is pressed and every stick axis is within
  ``idle_deadzone``. With ``drop_idle``, runs of at least ``idle_min_run`` idle rows are removed,
  and the rows after a removed run start a new ``segment``: :class:`~nitrogen.data.GameplayDataset`
  never cuts a window across segments, so no window spans a removed gap.

Output rows hold the schema columns (``image`` PNG, the 17 buttons, ``j_left``/``j_right`` with +y
down, ``episode_id`` = ``<video_id>/<chunk_id>``, ``frame`` = the row in its chunk), plus ``game``,
``video_id``, ``chunk_id``, ``time_s`` (seconds into the video) and ``segment``. (``reward`` and
``score``, which ``nitrogen record`` adds, do not exist for videos.)

Writing: one task (a run of up to ``chunks_per_shard`` chunks of one video) becomes one shard
``OUT/data/part-NNNNNN.parquet``, streamed chunk by chunk (row groups) into a temporary file that is
renamed into place when the task is done (:mod:`nitrogen.atomic`); only one chunk's encoded frames
are held in memory. ``OUT/import.json`` is rewritten atomically after every shard: it lists each
chunk's outcome and the shards, so a rerun skips the chunks already written (and retries skipped
ones), and it is the final report (``"complete": true``). A corrupt chunk or video is named and
skipped, never fatal.

``workers`` > 1 runs tasks in a process pool (decoding is the bottleneck; see ``bench/import_nitrogen.py``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nitrogen.actions import BUTTON_SLICE, LEFT_STICK_SLICE, RIGHT_STICK_SLICE
from nitrogen.atomic import atomic_path, atomic_write_json
from nitrogen.data.schema import BUTTON_COLUMNS, ActionMapper, CorruptRowError, pad_features

logger = logging.getLogger(__name__)

ROWS_PER_SECOND = 60
"""The release's label rate: row ``i`` of a chunk is at ``start_time + i / 60``."""
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".webm", ".mkv")
RAW_FILE, PROCESSED_FILE, METADATA_FILE = "actions_raw.parquet", "actions_processed.parquet", "metadata.json"
REPORT_FILE = "import.json"
DATA_DIR = "data"
DEFAULT_IDLE_MIN_RUN = 60
"""Default shortest idle run removed by ``drop_idle``: 60 rows, one second at 60 Hz."""
DEFAULT_IDLE_DEADZONE = 0.1
"""A stick axis within this of 0 counts as centred for idle detection."""
ASPECT_TOLERANCE = 0.02
"""A download may differ from the metadata's resolution in size, but its aspect ratio only by 2%."""
MAX_MEMBER_BYTES = 64 << 20
"""Largest label file read from a tarball (a 1,200-row chunk's parquet is tens of KB)."""
_EPS_S = 1e-4  # timestamps closer than 0.1 ms are the same instant (float rounding of pts * time_base)
_SHOWN = 120


def _short(text: object) -> str:
    """A name from the input for a message, quoted and cut short: hostile input is never echoed in full."""
    s = str(text)
    return repr(s if len(s) <= _SHOWN else s[:_SHOWN] + "...")


class ChunkSkipped(Exception):
    """A chunk that cannot be imported; the message is the reason in the report."""


# ------------------------------------------------------------------------------------ metadata


class GameArea(BaseModel):
    """``bbox_game_area``: the game's part of the frame, in fractions of its width and height."""

    model_config = ConfigDict(extra="ignore")

    xtl: float = Field(ge=0.0, le=1.0)
    ytl: float = Field(ge=0.0, le=1.0)
    xbr: float = Field(ge=0.0, le=1.0)
    ybr: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _not_empty(self) -> GameArea:
        if self.xbr <= self.xtl or self.ybr <= self.ytl:
            raise ValueError("bbox_game_area is empty (xbr <= xtl or ybr <= ytl)")
        return self


class OriginalVideo(BaseModel):
    """``metadata.json``'s ``original_video``: where the chunk lies in its source video."""

    model_config = ConfigDict(extra="allow")

    video_id: str = Field(min_length=1, max_length=256)
    resolution: tuple[int, int] = Field(description="[height, width] of the original video")
    start_time: float = Field(ge=0.0, description="seconds into the video of row 0")
    end_time: float | None = None

    @field_validator("resolution")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError(f"resolution must be positive [height, width], got {list(value)}")
        return value


class ChunkMetadata(BaseModel):
    """The fields of a chunk's ``metadata.json`` the import uses (others are kept, unread)."""

    model_config = ConfigDict(extra="allow")

    chunk_id: int = Field(ge=0)
    original_video: OriginalVideo
    uuid: str | None = None
    chunk_size: int | None = None
    game: str = ""
    controller_type: str | None = None
    bbox_controller_overlay: tuple[float, float, float, float] | None = Field(
        None, description="[x, y, w, h] in pixels of the original video"
    )
    bbox_game_area: GameArea | None = None

    @field_validator("game", mode="before")
    @classmethod
    def _game(cls, value: Any) -> str:
        return "" if value is None else str(value)


# ------------------------------------------------------------------------------------ configuration


class ImportConfig(BaseModel):
    """Settings of :func:`import_nitrogen` (``nitrogen data import-nitrogen``'s flags)."""

    model_config = ConfigDict(extra="forbid")

    actions: Path = Field(description="the actions/ folder, one shard folder, or one .tar.gz shard")
    videos: Path = Field(description="folder of downloaded videos, <video_id>.mp4|webm|mkv")
    out: Path = Field(description="output folder: data/*.parquet and import.json")
    video_map: Path | None = Field(None, description="JSON {video_id: file name or path under videos}")
    processed: bool = Field(False, description="read actions_processed.parquet instead of actions_raw.parquet")
    drop_idle: bool = Field(False, description="remove runs of idle rows")
    idle_min_run: int = Field(DEFAULT_IDLE_MIN_RUN, ge=1, description="shortest idle run removed")
    idle_deadzone: float = Field(DEFAULT_IDLE_DEADZONE, ge=0.0, lt=1.0)
    games: list[str] | None = Field(None, description="import only chunks of these games")
    workers: int = Field(1, ge=1, le=256)
    decoder_threads: int = Field(0, ge=0, le=64, description="threads per video decoder; 0: cores / workers")
    image_size: int = Field(256, gt=0, le=4096, description="side of the square frames written")
    chunks_per_shard: int = Field(8, ge=1, description="chunks (of one video) per output shard")
    rows_per_group: int = Field(100, ge=1, description="parquet row-group size")

    def settings(self) -> dict[str, Any]:
        """What must agree between an import and its resumption (the output's content)."""
        keys = ("processed", "drop_idle", "idle_min_run", "idle_deadzone", "image_size")
        return {k: getattr(self, k) for k in keys}


# ------------------------------------------------------------------------------------ input


@dataclass
class ChunkInput:
    """One chunk folder as read from the release: its files' bytes, or why it cannot be read."""

    shard: str
    video_folder: str
    name: str
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.shard}/{self.video_folder}/{self.name}"


def _is_tarball(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _shard_name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz"):
        name = name.removesuffix(suffix)
    return name


def _is_shard_folder(path: Path) -> bool:
    return any(True for _ in path.glob(f"*/*/{METADATA_FILE}"))


def iter_chunks(
    actions: Path, wanted: Sequence[str] = (METADATA_FILE, RAW_FILE, PROCESSED_FILE)
) -> Iterator[ChunkInput]:
    """Every chunk under ``actions`` (the actions/ folder, a shard folder or a shard tarball), in order.

    Tarballs are read as a stream (``tarfile`` mode ``r|*``), never unpacked to disk; only the
    ``wanted`` files are read, each at most :data:`MAX_MEMBER_BYTES`.
    """
    actions = Path(actions)
    if actions.is_file() and _is_tarball(actions):
        yield from _iter_tarball(actions, wanted)
    elif actions.is_dir() and _is_shard_folder(actions):
        yield from _iter_shard_folder(actions, wanted)
    elif actions.is_dir():
        for child in sorted(actions.iterdir()):
            if child.is_dir() and _is_shard_folder(child):
                yield from _iter_shard_folder(child, wanted)
            elif child.is_file() and _is_tarball(child):
                yield from _iter_tarball(child, wanted)
    else:
        raise FileNotFoundError(f"{actions}: neither a folder of the release nor a .tar.gz shard")


def _iter_shard_folder(shard: Path, wanted: Sequence[str]) -> Iterator[ChunkInput]:
    for video in sorted(p for p in shard.iterdir() if p.is_dir()):
        for chunk_dir in sorted(p for p in video.iterdir() if p.is_dir()):
            chunk = ChunkInput(shard.name, video.name, chunk_dir.name)
            for name in wanted:
                path = chunk_dir / name
                if path.is_file():
                    try:
                        chunk.files[name] = path.read_bytes()
                    except OSError as exc:
                        chunk.error = f"cannot read {name}: {exc.strerror}"
            yield chunk


def _iter_tarball(path: Path, wanted: Sequence[str]) -> Iterator[ChunkInput]:
    """Chunks of a tarball in stream order; a chunk ends when a member of another folder starts."""
    current: ChunkInput | None = None
    members = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                members += 1
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or parts[-1] not in wanted:
                    continue
                shard = parts[-4] if len(parts) >= 4 else _shard_name(path)
                chunk = ChunkInput(shard, parts[-3], parts[-2])
                if current is None or current.key != chunk.key:
                    if current is not None:
                        yield current
                    current = chunk
                if member.size > MAX_MEMBER_BYTES:
                    current.error = f"{parts[-1]} is {member.size} bytes, over the limit of {MAX_MEMBER_BYTES}"
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    current.files[parts[-1]] = handle.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if current is not None:  # its files may be incomplete: do not import it
            current.error = f"the tarball broke off while reading it: {type(exc).__name__}"
            yield current
            current = None
        reason = f"the tarball is unreadable after {members} members: {type(exc).__name__}: {str(exc)[:200]}"
        yield ChunkInput(_shard_name(path), "(tarball)", path.name, error=reason)
    if current is not None:
        yield current


# ------------------------------------------------------------------------------------ videos


def video_index(videos: Path, video_map: Path | None = None) -> dict[str, Path]:
    """``video_id -> file``: ``<video_id>.<mp4|webm|mkv>`` in ``videos``, then the mapping file's entries.

    A mapping entry names a file relative to ``videos`` (or an absolute path).
    """
    videos = Path(videos)
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos} is not a folder")
    index: dict[str, Path] = {}
    for path in sorted(videos.iterdir()):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            index.setdefault(path.stem, path)
    if video_map is not None:
        doc = json.loads(Path(video_map).read_text())
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise ValueError(f"{video_map}: a video map must be a JSON object of video_id -> file name")
        for video_id, name in doc.items():
            index[str(video_id)] = videos / name
    return index


# ------------------------------------------------------------------------------------ per chunk


@dataclass
class ChunkTask:
    """One chunk handed to a worker: its key, parsed metadata and label bytes."""

    key: str
    metadata: ChunkMetadata
    labels: bytes


@dataclass
class Task:
    """A run of chunks of one video, written as one shard."""

    shard_name: str
    video: Path
    chunks: list[ChunkTask]


@dataclass
class ChunkOutcome:
    key: str
    game: str
    rows_read: int = 0
    rows_written: int = 0
    idle_rows: int = 0
    reason: str | None = None


@dataclass
class TaskResult:
    shard_name: str
    outcomes: list[ChunkOutcome]
    rows_written: int
    frames_decoded: int
    decode_s: float
    convert_s: float = 0.0


def idle_rows(actions: np.ndarray, deadzone: float) -> np.ndarray:
    """``(N,)`` bool: rows of ``(N, 25)`` packed actions with no button and both sticks centred."""
    sticks = np.concatenate([actions[:, LEFT_STICK_SLICE], actions[:, RIGHT_STICK_SLICE]], axis=1) * 2 - 1
    return ~(actions[:, BUTTON_SLICE] > 0.5).any(axis=1) & (np.abs(sticks) <= deadzone).all(axis=1)


def drop_idle_runs(idle: np.ndarray, min_run: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep (N,) bool, segment (N,) int64)``: runs of ``min_run`` or more idle rows are dropped,
    and the segment number goes up by one after each dropped run (so no window spans it)."""
    n = len(idle)
    keep = np.ones(n, dtype=bool)
    segment = np.zeros(n, dtype=np.int64)
    seg, i = 0, 0
    while i < n:
        if not idle[i]:
            segment[i] = seg
            i += 1
            continue
        j = i
        while j < n and idle[j]:
            j += 1
        if j - i >= min_run:
            keep[i:j] = False
            if i > 0 and j < n:  # rows after the gap start a new segment
                seg += 1
        else:
            segment[i:j] = seg
        i = j
    return keep, segment


def _labels(data: bytes) -> tuple[dict[str, list[Any]], np.ndarray]:
    """A chunk's label parquet -> (its schema columns, ``(N, 25)`` packed actions through the one mapping)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for garbage
        raise ChunkSkipped(f"unreadable labels: {type(exc).__name__}") from None
    needed = [*BUTTON_COLUMNS, "j_left", "j_right"]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ChunkSkipped(f"labels lack the columns {', '.join(missing)}")
    if table.num_rows == 0:
        raise ChunkSkipped("labels have no rows")
    columns = table.select(needed).to_pydict()
    errors: list[CorruptRowError] = []
    actions = ActionMapper().table_to_actions(columns, num_rows=table.num_rows, errors=errors)
    if errors:
        raise ChunkSkipped(f"bad labels: {errors[0]}")
    for stick in ("j_left", "j_right"):
        columns[stick] = np.clip(np.asarray(columns[stick], dtype=np.float32), -1.0, 1.0).tolist()
    return columns, actions


@dataclass
class FrameGeometry:
    """Where to mask and crop frames of the real resolution ``(width, height)``."""

    mask: tuple[int, int, int, int] | None  # x0, y0, x1, y1 in real pixels
    crop: tuple[int, int, int, int]  # x0, y0, x1, y1 in real pixels


def frame_geometry(meta: ChunkMetadata, width: int, height: int) -> FrameGeometry:
    """The overlay box scaled to the real resolution, and the game-area crop; raises :class:`ChunkSkipped`
    when the real resolution's aspect ratio disagrees with the metadata's."""
    meta_h, meta_w = meta.original_video.resolution
    if abs((width / height) / (meta_w / meta_h) - 1.0) > ASPECT_TOLERANCE:
        raise ChunkSkipped(
            f"the video is {width}x{height}, whose aspect ratio disagrees with the metadata's {meta_w}x{meta_h}"
        )
    sx, sy = width / meta_w, height / meta_h
    mask = None
    if meta.bbox_controller_overlay is not None:
        x, y, w, h = meta.bbox_controller_overlay
        # Outward rounding: the whole overlay is covered at any scale.
        x0, y0 = max(0, math.floor(x * sx)), max(0, math.floor(y * sy))
        x1, y1 = min(width, math.ceil((x + w) * sx)), min(height, math.ceil((y + h) * sy))
        mask = (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
    crop = (0, 0, width, height)
    if (area := meta.bbox_game_area) is not None:
        crop = (round(area.xtl * width), round(area.ytl * height), round(area.xbr * width), round(area.ybr * height))
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            raise ChunkSkipped(f"the game area is empty at {width}x{height}")
    return FrameGeometry(mask, crop)


def prepare_frame(rgb: np.ndarray, geometry: FrameGeometry, size: int) -> np.ndarray:
    """Black out the overlay, crop the game area, squash to ``size x size`` (INTER_AREA)."""
    from nitrogen.inference.preprocessing import resize_frame

    if geometry.mask is not None:
        x0, y0, x1, y1 = geometry.mask
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        rgb[y0:y1, x0:x1] = 0
    x0, y0, x1, y1 = geometry.crop
    return resize_frame(rgb[y0:y1, x0:x1], size)  # OpenCV reads the crop as a view (no copy)


class VideoReader:
    """One open video: frames shown at given times, by presentation timestamp (PyAV)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise ChunkSkipped(f"undecodable video {path.name}: {_reason(exc)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise ChunkSkipped(f"video {path.name} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = threads
        base = self.stream.time_base
        self.offset_s = float(self.stream.start_time * base) if self.stream.start_time is not None else 0.0
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.frame_s = 1.0 / float(rate) if rate else 1.0 / 30.0
        self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
        self.frames_decoded = 0
        self.decode_s = 0.0  # CPU seconds inside frames_at, conversions included
        self.convert_s = 0.0  # CPU seconds of the conversions (RGB, mask, crop, resize, PNG) alone

    def close(self) -> None:
        self.container.close()

    def frames_at(self, times: np.ndarray, convert: Callable[[Any], Any]) -> list[Any]:
        """``convert(frame)`` of the frame shown at each of the increasing ``times`` (seconds from
        the video's start). A frame shown at several times is converted once."""
        import av

        out: list[Any] = []
        if len(times) == 0:
            return out
        convert_one = convert

        def convert(frame: Any) -> Any:
            t0 = time.process_time()
            try:
                return convert_one(frame)
            finally:
                self.convert_s += time.process_time() - t0

        targets = np.asarray(times, dtype=np.float64) + self.offset_s
        start = time.process_time()  # CPU seconds (decoder threads included): per-core figures, whatever the load
        prev: Any = None
        prev_t = -math.inf
        prev_value: Any = None
        i = 0
        try:
            # The nearest keyframe at or before the first target; decoding runs on from there.
            self.container.seek(max(0, int(targets[0] / float(self.stream.time_base))), stream=self.stream)
            for frame in self.container.decode(self.stream):
                self.frames_decoded += 1
                if frame.pts is None:
                    continue
                t = float(frame.pts * self.stream.time_base)
                while i < len(targets) and targets[i] < t - _EPS_S:  # shown before this frame: the previous one
                    if prev is None:
                        raise ChunkSkipped(f"the video has no frame at {targets[i] - self.offset_s:.3f} s")
                    if prev_value is None:
                        prev_value = convert(prev)
                    out.append(prev_value)
                    i += 1
                if i == len(targets):
                    break
                prev, prev_t, prev_value = frame, t, None
            while i < len(targets):  # after the last frame: shown while it lasts
                if prev is None or targets[i] >= prev_t + self.frame_s + _EPS_S:
                    end = max(prev_t + self.frame_s - self.offset_s, 0.0)
                    raise ChunkSkipped(
                        f"the video is too short: it ends at {end:.3f} s, the chunk needs {times[-1]:.3f} s"
                    )
                if prev_value is None:
                    prev_value = convert(prev)
                out.append(prev_value)
                i += 1
        except (av.FFmpegError, OSError) as exc:
            raise ChunkSkipped(
                f"undecodable video {self.path.name} near {times[min(i, len(times) - 1)]:.3f} s: {_reason(exc)}"
            ) from None
        finally:
            self.decode_s += time.process_time() - start
        return out


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def output_features() -> Any:
    """The ``datasets.Features`` of an imported shard."""
    import datasets

    feats = pad_features(episode_id="string")
    feats["segment"] = datasets.Value("int64")
    feats["game"] = datasets.Value("string")
    feats["video_id"] = datasets.Value("string")
    feats["chunk_id"] = datasets.Value("int64")
    feats["time_s"] = datasets.Value("float64")
    return datasets.Features(feats)


def _chunk_columns(
    chunk: ChunkTask, reader: VideoReader, config: ImportConfig
) -> tuple[dict[str, list[Any]], int, int]:
    """A chunk's output columns (all its kept rows), its rows read and its idle rows."""
    from .images import png_bytes

    columns, actions = _labels(chunk.labels)
    n = len(actions)
    idle = idle_rows(actions, config.idle_deadzone)
    if config.drop_idle:
        keep, segment = drop_idle_runs(idle, config.idle_min_run)
    else:
        keep, segment = np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)
    rows = np.flatnonzero(keep)
    meta = chunk.metadata
    geometry = frame_geometry(meta, reader.width, reader.height)
    start = meta.original_video.start_time
    times = start + rows / ROWS_PER_SECOND

    def convert(frame: Any) -> dict[str, Any]:
        rgb = frame.to_ndarray(format="rgb24")
        if rgb.shape[1] != reader.width or rgb.shape[0] != reader.height:
            raise ChunkSkipped(f"the video changes resolution mid-stream ({rgb.shape[1]}x{rgb.shape[0]})")
        return {"bytes": png_bytes(prepare_frame(rgb, geometry, config.image_size)), "path": None}

    images = reader.frames_at(times, convert)
    video_id = meta.original_video.video_id
    out: dict[str, list[Any]] = {"image": images}
    for name in (*BUTTON_COLUMNS, "j_left", "j_right"):
        out[name] = [columns[name][r] for r in rows]
    out["episode_id"] = [f"{video_id}/{meta.chunk_id}"] * len(rows)
    out["frame"] = rows.tolist()
    out["segment"] = segment[rows].tolist()
    out["game"] = [meta.game] * len(rows)
    out["video_id"] = [video_id] * len(rows)
    out["chunk_id"] = [meta.chunk_id] * len(rows)
    out["time_s"] = times.tolist()
    return out, n, int(idle.sum())


def run_task(task: Task, config: ImportConfig, data_dir: Path, threads: int = 0) -> TaskResult:
    """Import one task's chunks into ``data_dir/<shard_name>`` (atomic; no file when nothing was kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    outcomes: list[ChunkOutcome] = []
    written = 0
    try:
        reader = VideoReader(task.video, threads)
    except ChunkSkipped as exc:
        outcomes = [ChunkOutcome(c.key, c.metadata.game, reason=str(exc)) for c in task.chunks]
        return TaskResult(task.shard_name, outcomes, 0, 0, 0.0)
    schema = output_features().arrow_schema
    target = data_dir / task.shard_name
    try:
        with atomic_path(target) as tmp:
            writer: Any = None
            try:
                for chunk in task.chunks:
                    outcome = ChunkOutcome(chunk.key, chunk.metadata.game)
                    outcomes.append(outcome)
                    try:
                        columns, outcome.rows_read, outcome.idle_rows = _chunk_columns(chunk, reader, config)
                    except ChunkSkipped as exc:
                        outcome.reason = str(exc)
                        continue
                    n = len(columns["frame"])
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, schema)
                    for lo in range(0, n, config.rows_per_group):  # one chunk's rows, a row group at a time
                        part = {k: v[lo : lo + config.rows_per_group] for k, v in columns.items()}
                        writer.write_table(pa.Table.from_pydict(part, schema=schema))
                    outcome.rows_written = n
                    written += n
                if writer is None:  # nothing kept: write an empty-but-valid file, removed below
                    pq.write_table(schema.empty_table(), tmp)
            finally:
                if writer is not None:
                    writer.close()
    finally:
        reader.close()
    if written == 0:
        target.unlink(missing_ok=True)
    return TaskResult(
        task.shard_name, outcomes, written, reader.frames_decoded, reader.decode_s - reader.convert_s, reader.convert_s
    )


# ------------------------------------------------------------------------------------ the import


class ImportState(BaseModel):
    """``import.json``: the progress of an import, and its final report."""

    model_config = ConfigDict(extra="ignore")

    complete: bool = False
    settings: dict[str, Any] = Field(default_factory=dict)
    shards: list[str] = Field(default_factory=list)
    chunks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)


def _load_state(out: Path, config: ImportConfig) -> ImportState:
    path = out / REPORT_FILE
    if not path.is_file():
        return ImportState(settings=config.settings())
    try:
        state = ImportState.model_validate_json(path.read_text())
    except (ValidationError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not an import report ({type(exc).__name__}); use a new --out") from None
    if state.settings != config.settings():
        raise ValueError(
            f"{out} was imported with other settings ({state.settings}); rerun with those or use a new --out"
        )
    return state


def _summary(state: ImportState, config: ImportConfig, run: dict[str, Any]) -> dict[str, Any]:
    """The report: counts over all chunks written so far (resumed runs included), and this run's speed."""
    games: dict[str, dict[str, int]] = {}
    rows_read = rows_written = idle = 0
    for record in state.chunks.values():
        g = games.setdefault(record["game"], {"chunks": 0, "rows": 0})
        g["chunks"] += 1
        g["rows"] += record["rows_written"]
        rows_read += record["rows_read"]
        rows_written += record["rows_written"]
        idle += record["idle_rows"]
    return {
        "complete": state.complete,
        "actions": str(config.actions),
        "videos": str(config.videos),
        "settings": state.settings,
        "chunks_imported": len(state.chunks),
        "chunks_skipped": len(state.skipped),
        "skipped": dict(sorted(state.skipped.items())),
        "rows_read": rows_read,
        "rows_written": rows_written,
        "idle_rows": idle,
        "idle_share": idle / rows_read if rows_read else 0.0,
        "rows_dropped_idle": rows_read - rows_written,
        "games": dict(sorted(games.items())),
        "this_run": run,
        "shards": state.shards,
        "chunks": state.chunks,
    }


def _tasks(config: ImportConfig, state: ImportState, videos: dict[str, Path], run: dict[str, Any]) -> Iterator[Task]:
    """Tasks for the chunks still to do; chunks that cannot start are recorded in ``state.skipped``."""
    labels_file = PROCESSED_FILE if config.processed else RAW_FILE
    games = set(config.games) if config.games else None
    next_shard = 1 + max((int(name.removeprefix("part-").split(".")[0]) for name in state.shards), default=-1)
    pending: list[ChunkTask] = []
    pending_video: Path | None = None

    def flush() -> Task | None:
        nonlocal pending, pending_video, next_shard
        if not pending or pending_video is None:
            return None
        task = Task(f"part-{next_shard:06d}.parquet", pending_video, pending)
        next_shard += 1
        pending, pending_video = [], None
        return task

    for chunk in iter_chunks(config.actions, (METADATA_FILE, labels_file)):
        key = chunk.key
        if key in state.chunks:
            run["chunks_already_done"] += 1
            continue
        if chunk.error is not None:
            state.skipped[key] = chunk.error
            continue
        if METADATA_FILE not in chunk.files:
            state.skipped[key] = f"no {METADATA_FILE}"
            continue
        if labels_file not in chunk.files:
            state.skipped[key] = f"no {labels_file}"
            continue
        try:
            meta = ChunkMetadata.model_validate_json(chunk.files[METADATA_FILE])
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "metadata"
            state.skipped[key] = f"bad {METADATA_FILE}: {where}: {first['msg'][:200]}"
            continue
        if games is not None and meta.game not in games:
            run["chunks_filtered"] += 1
            continue
        video = videos.get(meta.original_video.video_id)
        if video is None or not video.is_file():
            state.skipped[key] = f"video {_short(meta.original_video.video_id)} is missing from --videos"
            continue
        state.skipped.pop(key, None)
        full = pending_video is not None and (video != pending_video or len(pending) >= config.chunks_per_shard)
        if full and (task := flush()) is not None:
            yield task
        pending_video = video
        pending.append(ChunkTask(key, meta, chunk.files[labels_file]))
    if (task := flush()) is not None:
        yield task


def import_nitrogen(config: ImportConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) an import (see the module docstring); returns the report, also in ``OUT/import.json``.

    ``progress`` is called after every shard with the running counts.
    """
    out = Path(config.out)
    data_dir = out / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, config)
    state.complete = False
    for orphan in sorted({p.name for p in data_dir.glob("part-*.parquet")} - set(state.shards)):
        # Written, but killed before the report named it: its chunks are redone.
        logger.warning("removing %s, a shard the report does not list (an interrupted run)", orphan)
        (data_dir / orphan).unlink()
    videos = video_index(config.videos, config.video_map)
    run: dict[str, Any] = {
        "workers": config.workers,
        "chunks_already_done": 0,
        "chunks_filtered": 0,
        "frames_decoded": 0,
        "decode_s": 0.0,
        "convert_s": 0.0,
        "rows_written": 0,
    }
    started = time.perf_counter()

    def record(result: TaskResult) -> None:
        for o in result.outcomes:
            if o.reason is not None:
                state.skipped[o.key] = o.reason
            else:
                state.skipped.pop(o.key, None)
                state.chunks[o.key] = {
                    "game": o.game,
                    "shard": result.shard_name if o.rows_written else None,
                    "rows_read": o.rows_read,
                    "rows_written": o.rows_written,
                    "idle_rows": o.idle_rows,
                }
        if result.rows_written:
            state.shards.append(result.shard_name)
        run["frames_decoded"] += result.frames_decoded
        run["decode_s"] += result.decode_s
        run["convert_s"] += result.convert_s
        run["rows_written"] += result.rows_written
        report = _summary(state, config, _speed(run, started))
        atomic_write_json(out / REPORT_FILE, report)
        if progress is not None:
            progress(report)

    tasks = _tasks(config, state, videos, run)
    threads = config.decoder_threads or max(1, (os.cpu_count() or 1) // config.workers)
    if config.workers == 1:
        for task in tasks:
            record(run_task(task, config, data_dir, threads))
    else:
        import multiprocessing

        with ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            running: set[Future[TaskResult]] = set()
            for task in tasks:
                running.add(pool.submit(run_task, task, config, data_dir, threads))
                if len(running) >= 2 * config.workers:  # bounded: the tarball is read only as fast as it is used
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        record(future.result())
            for future in running:
                record(future.result())
    state.complete = True
    report = _summary(state, config, _speed(run, started))
    atomic_write_json(out / REPORT_FILE, report)
    return report


def _speed(run: dict[str, Any], started: float) -> dict[str, Any]:
    wall = time.perf_counter() - started
    decode = run["decode_s"]
    return run | {
        "wall_s": round(wall, 3),
        "decode_s": round(decode, 3),
        "convert_s": round(run["convert_s"], 3),
        # Frames per CPU-second of decoding: the decoder's speed per core.
        "decode_frames_per_s_per_worker": round(run["frames_decoded"] / decode, 1) if decode else None,
        "rows_per_s": round(run["rows_written"] / wall, 1) if wall else None,
    }
