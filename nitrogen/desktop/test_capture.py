"""find_window and ScreenCapture: pure parts always, the X11 path on an Xvfb server started here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nitrogen.desktop.capture import ScreenCapture, as_region, find_window, list_windows
from nitrogen.desktop.errors import DisplayUnavailableError, WindowNotFoundError
from nitrogen.desktop.window import Region, WindowInfo

COLOR = (200, 30, 90)  # distinct channels, so RGB vs BGR order shows
BIG = (30, 40, 120, 80)  # x, y, width, height of the window to find
SCREEN = (320, 240)

WINDOW_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from Xlib import X, Xatom, display

    disp = display.Display(sys.argv[1])
    screen = disp.screen()
    r, g, b = (int(v) for v in sys.argv[2].split(","))
    pixel = screen.default_colormap.alloc_color(r * 257, g * 257, b * 257).pixel
    pid_atom = disp.intern_atom("_NET_WM_PID")

    def window(x, y, w, h, title, mapped=True):
        win = screen.root.create_window(x, y, w, h, 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
                                        background_pixel=pixel, override_redirect=True)
        win.change_property(pid_atom, Xatom.CARDINAL, 32, [os.getpid()])
        win.set_wm_name(title)
        if mapped:
            win.map()
        return win

    window(0, 0, 20, 10, "toolbox")
    window(0, 0, 300, 200, "hidden splash", mapped=False)
    window(*[int(v) for v in sys.argv[3].split(",")], "The Game")
    disp.sync()
    print("ready", flush=True)
    sys.stdin.read()  # live until the test closes our stdin
    """
)


def test_display_unset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DisplayUnavailableError, match="DISPLAY is not set"):
        find_window(os.getpid())
    with pytest.raises(DisplayUnavailableError, match="DISPLAY is not set"):
        ScreenCapture((0, 0, 10, 10)).grab()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # python-xlib leaks the failed socket
def test_unreachable_display_is_a_clear_error() -> None:
    with pytest.raises(DisplayUnavailableError, match="cannot connect"):
        find_window(os.getpid(), display=":4093")


def test_region_forms() -> None:
    r = Region(1, 2, 3, 4)
    assert as_region(r) is r
    assert as_region((1, 2, 3, 4)) == r
    assert as_region({"left": 1, "top": 2, "width": 3, "height": 4}) == r
    assert as_region(WindowInfo(7, "t", 1, 2, 3, 4)) == r
    with pytest.raises(ValueError, match="empty"):
        ScreenCapture((0, 0, 0, 5))


def _free_display() -> int:
    for n in range(60, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private Xvfb server (320x240x24); skips when Xvfb is not installed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("X11 capture is Linux-only")
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not available: install it (Debian: apt-get install xvfb) to run the X11 capture test")
    for _ in range(3):
        n = _free_display()
        proc = subprocess.Popen(
            ["Xvfb", f":{n}", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket = Path(f"/tmp/.X11-unix/X{n}")
        deadline = time.monotonic() + 10
        while not socket.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
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


@pytest.fixture(scope="module")
def game(xvfb: str) -> Iterator[subprocess.Popen[str]]:
    """A python-xlib program with three windows (small, unmapped, and the big coloured one)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WINDOW_SCRIPT, xvfb, ",".join(map(str, COLOR)), ",".join(map(str, BIG))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes both pipes


def test_find_window_by_pid_on_xvfb(xvfb: str, game: subprocess.Popen[str]) -> None:
    windows = list_windows(game.pid, display=xvfb)
    assert sorted((w.width, w.height, w.visible) for w in windows) == [
        (20, 10, True),
        (120, 80, True),
        (300, 200, False),
    ]
    win = find_window(game.pid, display=xvfb)
    assert (win.x, win.y, win.width, win.height) == BIG
    assert win.title == "The Game" and win.visible
    # The test process has no window itself, but its child (the game) does.
    assert find_window(os.getpid(), display=xvfb).id == win.id
    with pytest.raises(WindowNotFoundError, match="_NET_WM_PID"):
        find_window(os.getpid(), display=xvfb, include_children=False)


def test_capture_window_pixels_on_xvfb(xvfb: str, game: subprocess.Popen[str]) -> None:
    with ScreenCapture.for_process(game.pid, display=xvfb) as cap:
        frame = cap.grab()
        assert frame.shape == (BIG[3], BIG[2], 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
        assert (frame.reshape(-1, 3) == COLOR).all(), np.unique(frame.reshape(-1, 3), axis=0)[:5]
        assert cap.grab().shape == frame.shape  # the handle is reused


def test_capture_clips_to_the_screen_on_xvfb(xvfb: str, game: subprocess.Popen[str]) -> None:
    with ScreenCapture(None, display=xvfb) as cap:
        full = cap.grab()
    assert full.shape == (SCREEN[1], SCREEN[0], 3)
    x, y, w, h = BIG
    assert (full[y : y + h, x : x + w] == COLOR).all()
    with ScreenCapture((300, 220, 100, 100), display=xvfb) as cap:
        assert cap.grab().shape == (20, 20, 3)
    with pytest.raises(ValueError, match="outside the screen"):
        ScreenCapture((1000, 1000, 10, 10), display=xvfb).grab()
