"""Fixtures of the desktop tests: private Xvfb servers (the X11 tests skip where Xvfb is missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _free_display() -> int:
    for n in range(60, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@contextmanager
def xvfb_server(width: int, height: int) -> Iterator[str]:
    """A private Xvfb server ``WIDTHxHEIGHTx24``; yields its display name. Skips without Xvfb."""
    if not sys.platform.startswith("linux"):
        pytest.skip("X11 is Linux-only")
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not available: install it (Debian: apt-get install xvfb) to run the X11 tests")
    for _ in range(3):
        n = _free_display()
        proc = subprocess.Popen(
            ["Xvfb", f":{n}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp", "-noreset"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket = Path(f"/tmp/.X11-unix/X{n}")
        deadline = time.monotonic() + 10
        while not socket.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # Xvfb creates its socket when it accepts clients
        if socket.exists() and proc.poll() is None:
            try:
                yield f":{n}"
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            return
        proc.kill()
        proc.wait(timeout=10)
    pytest.skip("Xvfb not available: it is installed but did not start")
