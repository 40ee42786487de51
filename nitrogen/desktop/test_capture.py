"""find_window and ScreenCapture: pure parts always, the X11 path on an Xvfb server started here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from nitrogen.desktop.capture import ScreenCapture, as_region, find_window, list_windows
from nitrogen.desktop.errors import DisplayUnavailableError, WindowNotFoundError
from nitrogen.desktop.window import Region, WindowInfo

from .conftest import xvfb_server

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


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private Xvfb server (320x240x24); skips when Xvfb is not installed."""
    with xvfb_server(*SCREEN) as display:
        yield display


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


# A game that opens its window late, sets neither _NET_WM_PID nor WM_NAME (so only X-Resource
# finds its owner), and moves or resizes its window when told to on stdin.
BARE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from Xlib import X, display

    disp = display.Display(sys.argv[1])
    screen = disp.screen()
    r, g, b = (int(v) for v in sys.argv[2].split(","))
    x, y, w, h = (int(v) for v in sys.argv[3].split(","))
    time.sleep(float(sys.argv[4]))  # the window appears late, as a game's does
    pixel = screen.default_colormap.alloc_color(r * 257, g * 257, b * 257).pixel
    win = screen.root.create_window(x, y, w, h, 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
                                    background_pixel=pixel, override_redirect=True)
    if sys.argv[5] == "fullscreen":
        state = disp.intern_atom("_NET_WM_STATE")
        win.change_property(state, disp.intern_atom("ATOM"), 32, [disp.intern_atom("_NET_WM_STATE_FULLSCREEN")])
    win.map()
    disp.sync()
    print("mapped", flush=True)
    for line in sys.stdin:
        x, y, w, h = (int(v) for v in line.split())
        win.configure(x=x, y=y, width=w, height=h)
        win.clear_area()
        disp.sync()
        print("moved", flush=True)
    """
)


def _bare_game(
    tmp_path: Path,
    display: str,
    color: tuple[int, int, int],
    geometry: tuple[int, int, int, int],
    delay: float,
    mode: str = "window",
) -> subprocess.Popen[str]:
    """The bare game started by a launcher script, which waits for it (so the game is its child)."""
    script = tmp_path / "bare_game.py"
    script.write_text(BARE_SCRIPT)
    launcher = tmp_path / "launch-game.sh"
    args = " ".join([display, ",".join(map(str, color)), ",".join(map(str, geometry)), str(delay), mode])
    launcher.write_text(f"#!/bin/sh\n'{sys.executable}' '{script}' {args}\n")
    launcher.chmod(0o755)
    return subprocess.Popen([str(launcher)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.communicate(timeout=10)


def test_late_window_without_pid_or_name_is_found_through_a_launcher_and_followed(xvfb: str, tmp_path: Path) -> None:
    color = (20, 180, 60)
    launcher = _bare_game(tmp_path, xvfb, color, (50, 60, 80, 40), delay=0.5)
    try:
        # The launcher's own process owns no window; its child's window has no _NET_WM_PID and no
        # WM_NAME, and appears half a second after the start: X-Resource names its owner.
        win = find_window(launcher.pid, display=xvfb, timeout=20)
        assert (win.x, win.y, win.width, win.height) == (50, 60, 80, 40) and win.title == ""
        assert win.pid is not None and win.pid != launcher.pid
        assert win.pid in {c.pid for c in psutil.Process(launcher.pid).children(recursive=True)}
        with ScreenCapture.for_process(launcher.pid, display=xvfb) as cap:
            assert cap.grab().shape == (40, 80, 3)
            assert launcher.stdout is not None and launcher.stdout.readline().strip() == "mapped"
            assert launcher.stdin is not None
            launcher.stdin.write("100 90 120 60\n")
            launcher.stdin.flush()
            assert launcher.stdout.readline().strip() == "moved"
            frame = cap.grab()  # the capture follows the window to its new place and size
            assert frame.shape == (60, 120, 3) and (frame.reshape(-1, 3) == color).all()
            assert cap.region == Region(100, 90, 120, 60)
            launcher.stdin.write("250 200 200 100\n")  # partly off the 320x240 screen: clipped
            launcher.stdin.flush()
            assert launcher.stdout.readline().strip() == "moved"
            assert cap.grab().shape == (40, 70, 3)
    finally:
        _stop(launcher)


def test_fullscreen_window_is_found_and_captured(xvfb: str, tmp_path: Path) -> None:
    color = (90, 10, 200)
    launcher = _bare_game(tmp_path, xvfb, color, (0, 0, *SCREEN), delay=0.0, mode="fullscreen")
    try:
        assert launcher.stdout is not None and launcher.stdout.readline().strip() == "mapped"
        win = find_window(launcher.pid, display=xvfb)
        assert (win.x, win.y, win.width, win.height) == (0, 0, *SCREEN)
        with ScreenCapture.for_process(launcher.pid, display=xvfb) as cap:
            frame = cap.grab()
        assert frame.shape == (SCREEN[1], SCREEN[0], 3) and (frame.reshape(-1, 3) == color).all()
    finally:
        _stop(launcher)


def test_no_window_after_the_timeout_lists_what_was_found(xvfb: str, game: subprocess.Popen[str]) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(WindowNotFoundError, match="after waiting 0.3 s") as err:
            find_window(sleeper.pid, display=xvfb, timeout=0.3)
        # The display's top-level windows are listed, with their owners: the test game's among them.
        assert f"pid {game.pid}" in str(err.value) and "'The Game' 120x80+30+40 viewable" in str(err.value)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
