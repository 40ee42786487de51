"""Atomic writes, in one place: every file the project writes goes through :func:`atomic_write`.

A write goes to a temporary file beside the target, is flushed and fsynced, then renamed over the
target (``os.replace``, atomic on POSIX and Windows). A reader, or a run killed half-way, sees the
old file or the new one, never a torn one. Temporary names start with a dot and end in ``.tmp``,
so globs such as ``*.parquet`` or ``*.json`` never pick them up.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that opens files itself (torch.save,
    pyarrow, numpy memmaps); on success it is fsynced and renamed over ``path``, on error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | os.PathLike[str], data: str | bytes | Callable[[IO[Any]], None], *, newline: str | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically: text, bytes, or a callable that writes to the open file
    (text mode unless ``data`` is bytes). Returns ``path``."""
    target = Path(path)
    with atomic_path(target) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        elif isinstance(data, str):
            with open(tmp, "w", encoding="utf-8", newline=newline) as f:
                f.write(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline=newline) as f:
                data(f)
    return target


def atomic_write_json(path: str | os.PathLike[str], doc: Any, **dumps: Any) -> Path:
    """``json.dumps(doc, indent=2)`` written atomically."""
    return atomic_write(path, json.dumps(doc, **({"indent": 2} | dumps)))
