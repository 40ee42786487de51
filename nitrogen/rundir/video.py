"""The threaded video encoder of run folders: RGB ``uint8`` frames to H.264 ``.mp4``.

:class:`VideoWriter` encodes with PyAV / libx264 (``yuv420p``) in a background thread fed by a
bounded queue, so a 60 Hz play loop never waits on the encoder. The video is written to a
temporary name beside the target (through :func:`nitrogen.atomic.atomic_path`) and renamed into
place when the writer is closed: an mp4 is only playable once its index is written at the end, so
a half-written file would be useless anyway, and this way ``clean.mp4`` / ``debug.mp4`` either do
not exist or are complete. ``close`` (also at interpreter exit, and after ``KeyboardInterrupt``)
finishes the file; only a hard kill leaves the dot-prefixed ``.tmp`` file behind.

``av`` (PyAV) is imported only when a video is actually written.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import queue
import threading
import weakref
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from ..atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["VideoWriter", "check_frame", "even_size"]

_STOP = object()
"""Queue sentinel: flush the encoder and end the writer thread."""

_OPEN_WRITERS: weakref.WeakSet[VideoWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:  # pragma: no cover - runs at interpreter exit
    """Finish writers that were never closed, so their files stay playable.

    The writer threads are daemons (a forgotten writer must not hang interpreter exit), and daemon
    threads still run while ``atexit`` handlers do, so closing here still flushes the encoder.
    """
    for writer in list(_OPEN_WRITERS):
        try:
            writer.close()
        except BaseException as exc:  # noqa: BLE001 - nothing more to do with an error at exit
            log.warning("could not finish %s at exit: %r", writer.path, exc)


def _av() -> Any:
    """PyAV, imported on first use: only writing a video needs it."""
    import av

    return av


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate an RGB frame: ``(H, W, 3)`` ``uint8`` with H, W >= 2."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"frame must be at least 2x2 pixels, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def even_size(width: int, height: int) -> tuple[int, int]:
    """The encoded size of a ``width`` x ``height`` source: each odd dimension grows by 1 pixel."""
    return width + (width % 2), height + (height % 2)


class VideoWriter:
    """Writes RGB ``uint8`` frames to an H.264 ``.mp4`` from a background thread.

    The first frame fixes the video size. ``yuv420p`` needs an even width and height, so an odd
    dimension is **padded by one pixel** that repeats the last row / column (nothing is cropped):
    a 161x211 source gives a 162x212 video (see :func:`even_size`). Later frames of another size
    are first resized to the first frame's size with ``cv2.INTER_AREA``, then padded the same way.
    Colour conversion is OpenCV's ``COLOR_RGB2YUV_I420`` (BT.601, limited range), and the stream
    is tagged as such so players show the right colours.

    :meth:`write` copies the frame (the caller may reuse its buffer) and puts it on a queue of
    ``max_queue`` frames; conversion and encoding happen in the writer thread. When the queue is
    full, ``write`` **blocks** until the thread catches up, unless ``drop_when_full=True``, in which
    case the frame is dropped, counted in :attr:`dropped`, and ``write`` returns ``False``.

    :meth:`close` flushes the encoder, finishes the file, renames it from its temporary name to
    ``path`` and joins the thread. It is idempotent and safe in a ``finally`` after
    ``KeyboardInterrupt``: the file then holds every accepted frame and is a valid mp4. A writer that
    received no frame creates no file. An exception raised in the
    writer thread is re-raised (once) by the next :meth:`write` or :meth:`close`; the file is then
    unusable and later writes raise ``RuntimeError``.

    One thread should call ``write`` (a single producer). Also a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float = 30.0,
        crf: int = 23,
        preset: str = "veryfast",
        max_queue: int = 32,
        drop_when_full: bool = False,
    ) -> None:
        """Prepare a writer for ``path`` (the parent folder is created; the file on first frame).

        The container format follows the suffix of ``path`` (``.mp4``, ``.mov``, ``.mkv``).

        ``fps`` is the playback rate (fractional rates such as 29.97 are kept as a fraction),
        ``crf`` the x264 quality (0-51, lower is better), ``max_queue`` the number of frames that
        may wait for the encoder.
        """
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self.preset = preset
        self.drop_when_full = drop_when_full
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._source_size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._written = 0
        self._encoded = 0
        self._dropped = 0
        self._error: BaseException | None = None
        self._error_reported = False
        self._stop_sent = False
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- public state ------------------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Frames accepted by :meth:`write` (queued for encoding)."""
        return self._written

    @property
    def encoded(self) -> int:
        """Frames the writer thread has handed to the encoder so far (``written`` after close)."""
        return self._encoded

    @property
    def dropped(self) -> int:
        """Frames dropped because the queue was full (only with ``drop_when_full=True``)."""
        return self._dropped

    @property
    def size(self) -> tuple[int, int] | None:
        """The encoded ``(width, height)``, even in both; ``None`` before the first frame."""
        return None if self._source_size is None else even_size(*self._source_size)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writing -----------------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> bool:
        """Queue one RGB ``uint8`` ``(H, W, 3)`` frame; ``True`` if queued, ``False`` if dropped.

        Returns at once unless the queue is full (then it blocks, or drops the frame with
        ``drop_when_full``). Raises an error of the writer thread that was not reported yet.
        """
        if self._stop_sent or self._closed:
            raise RuntimeError(f"write() on a closed VideoWriter ({self.path})")
        self._raise_pending()
        if self._error is not None:
            raise RuntimeError(f"the video writer for {self.path} failed earlier: {self._error!r}")
        arr = np.array(check_frame(frame), copy=True, order="C")
        if self._source_size is None:
            self._source_size = (arr.shape[1], arr.shape[0])
            self._thread = threading.Thread(target=self._run, name=f"VideoWriter({self.path.name})", daemon=True)
            _OPEN_WRITERS.add(self)
            self._thread.start()
        if self.drop_when_full:
            try:
                self._queue.put_nowait(arr)
            except queue.Full:
                self._dropped += 1
                return False
        else:
            # The thread keeps draining the queue even after an error, so this always returns; the
            # timeout only lets an error surface while waiting.
            while True:
                try:
                    self._queue.put(arr, timeout=0.2)
                    break
                except queue.Full:
                    self._raise_pending()
        self._written += 1
        return True

    def close(self) -> None:
        """Flush the encoder, finish the file and join the thread. Idempotent.

        Re-raises an error of the writer thread that was not reported yet. If interrupted (e.g. a
        second Ctrl-C while flushing), calling ``close`` again finishes the job.
        """
        if self._closed:
            self._raise_pending()
            return
        if self._thread is not None:
            if not self._stop_sent:
                self._queue.put(_STOP)  # the thread always drains, so this cannot block forever
                self._stop_sent = True
            self._thread.join()
        self._stop_sent = True
        self._closed = True
        _OPEN_WRITERS.discard(self)
        self._raise_pending()

    def __enter__(self) -> VideoWriter:  # noqa: PYI034
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoWriter({str(self.path)!r}, fps={self.fps:g}, size={self.size}, written={self._written}, "
            f"encoded={self._encoded}, dropped={self._dropped}, closed={self._closed})"
        )

    # -- internals ---------------------------------------------------------------------------------

    def _raise_pending(self) -> None:
        err = self._error
        if err is not None and not self._error_reported:
            self._error_reported = True
            raise err

    def _to_yuv(self, frame: np.ndarray) -> np.ndarray:
        """Resize to the first frame's size, pad to even, convert RGB -> I420 planes."""
        assert self._source_size is not None
        w, h = self._source_size
        if (frame.shape[1], frame.shape[0]) != (w, h):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if w % 2 or h % 2:
            frame = cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        return cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)

    def _run(self) -> None:
        """Writer thread: encode queued frames until the stop sentinel; drain after an error.

        The container writes to the temporary path of :func:`~nitrogen.atomic.atomic_path`, which
        is renamed to :attr:`path` when the file was finished without error, and removed otherwise.
        """
        container: Any = None
        stream: Any = None
        target = contextlib.ExitStack()  # holds atomic_path(self.path) once the first frame came
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if self._error is not None:
                    continue  # keep draining so that a blocked write() returns
                try:
                    if container is None:
                        container, stream = self._open(target.enter_context(atomic_path(self.path)))
                    yuv = self._to_yuv(item)  # type: ignore[arg-type]
                    vframe = _av().VideoFrame.from_ndarray(yuv, format="yuv420p")
                    vframe.pts = self._encoded
                    for packet in stream.encode(vframe):
                        container.mux(packet)
                    self._encoded += 1
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error = exc
        finally:
            if container is not None:
                try:
                    if self._error is None:
                        for packet in stream.encode():  # flush the encoder's delayed frames
                            container.mux(packet)
                except BaseException as exc:  # noqa: BLE001
                    self._error = exc
                finally:
                    try:
                        container.close()
                    except BaseException as exc:  # noqa: BLE001
                        if self._error is None:
                            self._error = exc
            self._finish(target)

    def _finish(self, target: contextlib.ExitStack) -> None:
        """Rename the finished temporary file into place, or remove it after an error."""
        failed = self._error
        try:
            if failed is None:
                target.close()
            else:
                target.__exit__(type(failed), failed, failed.__traceback__)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            if self._error is None:
                self._error = exc

    def _open(self, tmp: Path) -> tuple[Any, Any]:
        """Open the container on the temporary file ``tmp`` and add the H.264 stream."""
        av = _av()
        assert self._source_size is not None
        width, height = even_size(*self._source_size)
        rate = Fraction(self.fps).limit_denominator(1001)
        container = av.open(str(tmp), mode="w", format=_container_format(self.path))
        try:
            stream = container.add_stream(
                "libx264",
                rate=rate,
                options={
                    "preset": self.preset,
                    "crf": str(self.crf),
                    # OpenCV's RGB2YUV_I420 is BT.601 limited range: say so in the bitstream.
                    "x264-params": "colormatrix=smpte170m:colorprim=smpte170m:transfer=smpte170m",
                },
            )
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1) / rate
        except BaseException:
            container.close()
            raise
        return container, stream


def _container_format(path: Path) -> str:
    """The muxer for ``path``'s suffix (the temporary name it is written under has none)."""
    suffix = path.suffix.lower().lstrip(".")
    return {"": "mp4", "mkv": "matroska", "m4v": "mp4"}.get(suffix, suffix)
