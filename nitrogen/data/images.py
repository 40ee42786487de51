"""Dataset image cells -> RGB frames, reading image bytes only and within a pixel budget.

:class:`ImageReader` is the one decoder of fine-tuning images (the dataset's reads and its frame
cache both go through it). A cell is an HF ``datasets.Image`` value read with decoding off (a
``{"bytes", "path"}`` dict), raw bytes, a path string, a PIL image or a uint8 ``(H, W, 3)`` array:

* **Bytes are all training reads.** A cell with bytes is decoded from them; its ``path`` is ignored.
  A cell with only a path is refused, unless the reader has an explicit ``image_root``: then the path
  must be relative and resolve (symlinks followed) to a regular file inside that folder. Absolute
  paths, ``..`` escapes and symlinks out of the folder are refused.
* **A pixel budget, checked on the header before decoding.** ``Image.open`` reads only the header;
  an image over ``max_pixels``, or with a side over
  :data:`~nitrogen.inference.preprocessing.MAX_FRAME_SIDE`, is refused before a pixel is
  decoded. PIL's own ``DecompressionBombWarning`` is an error here too.
* **Known formats only** (:data:`IMAGE_FORMATS`): bytes of any other format PIL could open (EPS, which
  runs Ghostscript, among them) are refused unopened.

Every refusal, and every decode failure (truncated data, not an image), is a ``ValueError`` that
says why in one line; :class:`~nitrogen.data.GameplayDataset` turns it into a
:class:`~nitrogen.data.CorruptRowError` naming the row.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nitrogen.inference.preprocessing import MAX_FRAME_SIDE, as_rgb_frame

MAX_IMAGE_PIXELS = 50_000_000
"""Default pixel budget of one dataset image (width x height), checked before decoding."""

IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""The PIL formats a dataset image may be in; PIL never tries any other."""

_SHOWN_PATH = 120  # characters of a refused path quoted in an error


def _quoted(path: str) -> str:
    return repr(path if len(path) <= _SHOWN_PATH else path[:_SHOWN_PATH] + "...")


class ImageReader(BaseModel):
    """Decodes dataset image cells (see the module docstring); :meth:`read` raises ``ValueError``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_root: Path | None = Field(
        None, description="folder that relative path-only cells are read from; None: such cells are refused"
    )
    max_pixels: int = Field(MAX_IMAGE_PIXELS, gt=0, description="largest width x height decoded")

    @field_validator("image_root")
    @classmethod
    def _existing_folder(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_dir():
            raise ValueError(f"image root {value} is not a folder")
        return value.resolve()

    def read(self, value: Any) -> np.ndarray:
        """One image cell -> contiguous RGB uint8 ``(H, W, 3)``."""
        from PIL import Image

        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                return self.decode_bytes(data)
            if path:
                return self._read_path(str(path))
            raise ValueError("image cell has neither bytes nor path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.decode_bytes(value)
        if isinstance(value, str):
            return self._read_path(value)
        if isinstance(value, Image.Image):
            self._check_size(value.size)
            return as_rgb_frame(value)
        if isinstance(value, np.ndarray):
            return as_rgb_frame(value)
        raise ValueError(f"unsupported image value of type {type(value).__name__}")

    def decode_bytes(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Encoded image bytes -> RGB uint8, header checked against the budget first."""
        return self._decode(io.BytesIO(bytes(data)))

    def _read_path(self, path: str) -> np.ndarray:
        if self.image_root is None:
            raise ValueError(
                f"image cell holds only a path ({_quoted(path)}), no bytes: training reads image bytes only "
                "(pass an image root, --image-root DIR, to read relative paths from DIR)"
            )
        if PurePath(path).is_absolute():
            raise ValueError(f"image path {_quoted(path)} is absolute; only paths relative to the image root are read")
        try:
            resolved = (self.image_root / path).resolve(strict=True)  # follows every symlink
        except (OSError, ValueError, RuntimeError) as exc:  # missing, a NUL byte, a symlink loop
            raise ValueError(f"image path {_quoted(path)} cannot be resolved under the image root: {exc}") from exc
        if not resolved.is_relative_to(self.image_root):
            raise ValueError(f"image path {_quoted(path)} resolves outside the image root {self.image_root}")
        # O_NOFOLLOW: the resolved path has no symlink left, so one appearing now is refused;
        # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting for a writer.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(resolved, flags)
        except OSError as exc:
            raise ValueError(f"image path {_quoted(path)} cannot be opened: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"image path {_quoted(path)} is not a regular file")
            return self._decode(file)

    def _check_size(self, size: tuple[int, int]) -> None:
        w, h = size
        if w > MAX_FRAME_SIDE or h > MAX_FRAME_SIDE:
            raise ValueError(f"image of {w}x{h} exceeds the {MAX_FRAME_SIDE}-pixel limit per side")
        if w * h > self.max_pixels:
            raise ValueError(f"image of {w}x{h} ({w * h} pixels) exceeds the budget of {self.max_pixels} pixels")

    def _decode(self, file: IO[bytes]) -> np.ndarray:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(file, formats=IMAGE_FORMATS)  # reads the header only
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                raise ValueError(f"image exceeds the budget of {self.max_pixels} pixels (PIL: {exc})") from exc
            except Image.UnidentifiedImageError as exc:
                raise ValueError(f"undecodable image: not a {', '.join(IMAGE_FORMATS)} image") from exc
            except Exception as exc:  # PIL raises many types for garbage (OSError, SyntaxError, ...)
                raise ValueError(f"undecodable image: {type(exc).__name__}: {exc}") from exc
            with img:
                self._check_size(img.size)
                try:
                    img.load()
                    rgb = img.convert("RGB")
                except Exception as exc:  # truncated data, a broken chunk, an unconvertible mode
                    raise ValueError(f"undecodable image: {type(exc).__name__}: {exc}") from exc
        return as_rgb_frame(np.asarray(rgb))


def png_bytes(frame: np.ndarray) -> bytes:
    """Lossless PNG encoding of an RGB ``uint8`` ``(H, W, 3)`` frame: the image cell that recordings and
    imports write (what :class:`ImageReader` reads back)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
