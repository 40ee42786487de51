"""KeyboardMousePad on a real Xvfb: an X client window listens to the XTEST events the pad sends."""

from __future__ import annotations

import gc
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

XK = pytest.importorskip("Xlib.XK")

from nitrogen.desktop import DesktopGameEnv
from nitrogen.desktop.keys import KeyboardMousePad, keys_down
from nitrogen.gamepad import GamepadState
from nitrogen.policy import ActionChunk, PolicySpec
from nitrogen.runtime.loop import PlayConfig, play

from .conftest import xvfb_server

RIGHT = GamepadState(buttons=frozenset({"DPAD_RIGHT"}))
NAMES = {XK.string_to_keysym(n): n for n in ("Left", "Right", "Up", "Down", "z", "x", "a", "s")}


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    from Xlib import X
    from Xlib import display as xdisplay

    with xvfb_server(320, 240) as display:
        # No autorepeat: a key held long on a loaded machine would otherwise add release/press
        # pairs of the server's own between the events the pad sent.
        disp = xdisplay.Display(display)
        disp.change_keyboard_control(auto_repeat_mode=X.AutoRepeatModeOff)
        disp.sync()
        disp.close()
        yield display


class Listener:
    """A window of another X client that records the key, button and motion events it receives."""

    def __init__(self, display: str) -> None:
        from Xlib import X
        from Xlib import display as xdisplay

        self.disp = xdisplay.Display(display)
        screen = self.disp.screen()
        mask = X.KeyPressMask | X.KeyReleaseMask | X.ButtonPressMask | X.ButtonReleaseMask | X.PointerMotionMask
        self.window = screen.root.create_window(
            0, 0, 200, 150, 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
            event_mask=mask, override_redirect=True,
        )  # fmt: skip
        self.window.map()
        self.disp.sync()

    def events(self, n: int, timeout: float = 10.0) -> list[tuple[str, Any, Any]]:
        """The next ``n`` input events: ``("key", keysym name, 1|0)``, ``("button", n, 1|0)``, ``("motion", x, y)``."""
        from Xlib import X

        out: list[tuple[str, Any, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            if not self.disp.pending_events():
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.disp.fileno()], [], [], left)[0]:
                    break
            ev = self.disp.next_event()
            if ev.type in (X.KeyPress, X.KeyRelease):
                name = NAMES.get(self.disp.keycode_to_keysym(ev.detail, 0))
                out.append(("key", name, int(ev.type == X.KeyPress)))
            elif ev.type in (X.ButtonPress, X.ButtonRelease):
                out.append(("button", ev.detail, int(ev.type == X.ButtonPress)))
            elif ev.type == X.MotionNotify:
                out.append(("motion", ev.root_x, ev.root_y))
        return out

    def close(self) -> None:
        self.window.destroy()
        self.disp.close()


@pytest.fixture
def listener(xvfb: str) -> Iterator[Listener]:
    lst = Listener(xvfb)
    try:
        yield lst
    finally:
        lst.close()


def test_only_changes_are_sent_and_the_window_gets_the_focus(xvfb: str, listener: Listener) -> None:
    with KeyboardMousePad("arrows", window=listener.window.id, display=xvfb) as pad:
        assert pad.send(RIGHT) == [("key", "Right", 1)]
        assert listener.events(1) == [("key", "Right", 1)]
        assert listener.disp.get_input_focus().focus.id == listener.window.id  # no WM here: the pad focused it
        assert keys_down(["Right", "Left"], display=xvfb) == {"Right"}
        assert pad.send(RIGHT) == []  # nothing changed, nothing sent
        assert pad.send(GamepadState(left_stick=(0.4, 0.0))) == [("key", "Right", 0)]  # below the threshold
        both = GamepadState(buttons=frozenset({"DPAD_LEFT", "SOUTH"}), left_stick=(-0.9, 0.0))
        assert pad.send(both) == [("key", "Left", 1), ("key", "z", 1)]
        assert listener.events(3) == [("key", "Right", 0), ("key", "Left", 1), ("key", "z", 1)]
        assert pad.held == {"Left", "z"}
    # Leaving the `with` released everything; the server agrees.
    assert listener.events(2) == [("key", "Left", 0), ("key", "z", 0)]
    assert keys_down(["Right", "Left", "z"], display=xvfb) == set()


def test_mouse_motion_curve_carry_and_buttons(xvfb: str, listener: Listener) -> None:
    with KeyboardMousePad("wasd-mouse", window=listener.window.id, display=xvfb) as pad:
        # The pointer starts at the centre of the game window (100, 75).
        assert pad.send(GamepadState(right_stick=(1.0, 0.0))) == [("motion", 15, 0)]
        assert listener.events(2) == [("motion", 100, 75), ("motion", 115, 75)]
        slow = GamepadState(right_stick=(0.0, -0.4))  # 15 * (0.3 / 0.9) ** 2 = 1.67 px per frame, +y down
        sent = [pad.send(slow) for _ in range(3)]
        assert sent == [[("motion", 0, -1)], [("motion", 0, -2)], [("motion", 0, -2)]]  # the remainder carries
        assert listener.events(3)[-1] == ("motion", 115, 70)
        pad.send(GamepadState(right_trigger=1.0))
        assert listener.events(1) == [("button", 1, 1)]
    assert listener.events(1) == [("button", 1, 0)]


def test_a_dropped_pad_releases_its_keys(xvfb: str, listener: Listener) -> None:
    pad = KeyboardMousePad("arrows", window=listener.window.id, display=xvfb)
    pad.send(RIGHT)
    assert listener.events(1) == [("key", "Right", 1)]
    del pad
    gc.collect()  # the finalizer (also run at interpreter exit) releases what was held
    assert listener.events(1) == [("key", "Right", 0)]
    assert keys_down(["Right"], display=xvfb) == set()


_HOLD_AND_HANG = """
import sys, time
from nitrogen.desktop.keys import KeyboardMousePad
from nitrogen.gamepad import GamepadState
pad = KeyboardMousePad("arrows", window=int(sys.argv[2]), display=sys.argv[1])
pad.send(GamepadState(buttons=frozenset({"DPAD_RIGHT", "DPAD_UP"})))
print("held", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_pad_has_its_keys_released_by_its_guardian(xvfb: str, listener: Listener) -> None:
    """SIGKILL runs no finalizer; the guardian child sees the pipe close and releases the keys."""
    import subprocess
    import sys

    player = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_HANG, xvfb, str(listener.window.id)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert player.stdout.readline().strip() == "held"
        assert sorted(listener.events(2)) == [("key", "Right", 1), ("key", "Up", 1)]
        assert keys_down(["Right", "Up"], display=xvfb) == {"Right", "Up"}
        player.kill()
        player.wait(timeout=10)
        assert sorted(listener.events(2)) == [("key", "Right", 0), ("key", "Up", 0)]
        assert keys_down(["Right", "Up", "Left", "Down"], display=xvfb) == set()
    finally:
        player.kill()
        player.wait(timeout=10)


def test_a_closed_pad_dismisses_its_guardian(xvfb: str, listener: Listener) -> None:
    """After close() the guardian is gone: it cannot release a key someone else holds later."""
    import psutil

    pad = KeyboardMousePad("arrows", window=listener.window.id, display=xvfb)
    guardian = pad._guardian.pid
    assert psutil.pid_exists(guardian)
    pad.close()
    assert not psutil.pid_exists(guardian)
    assert KeyboardMousePad("arrows", display=xvfb, guard=False)._guardian is None


def test_send_returns_once_the_server_has_the_events(xvfb: str, listener: Listener) -> None:
    """A busy X server that reads its socket late must not lose a release (python-xlib's flush()
    gives up when the socket is not writable at once, and close() drops what is left): send()
    waits for the server. Here the server is stopped outright while the pad releases and closes."""
    pad = KeyboardMousePad("arrows", window=listener.window.id, display=xvfb)
    pad.send(RIGHT)
    assert listener.events(1) == [("key", "Right", 1)]
    xvfb_pid = int(Path(f"/tmp/.X{xvfb[1:]}-lock").read_text().split()[0])  # Xvfb writes its pid there

    def release_and_close() -> None:
        pad.send(GamepadState())
        pad.close()

    worker = threading.Thread(target=release_and_close)
    os.kill(xvfb_pid, signal.SIGSTOP)
    try:
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive()  # still waiting for the stopped server's answer
    finally:
        os.kill(xvfb_pid, signal.SIGCONT)
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert keys_down(["Right"], display=xvfb) == set()  # applied before send() returned
    assert listener.events(1) == [("key", "Right", 0)]


class _Screen:
    def grab(self) -> np.ndarray:
        return np.zeros((48, 64, 3), np.uint8)


class _HoldThenFail:
    """Holds right for a chunk, then raises ``error`` from the second predict."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.calls = error, 0
        self.spec = PolicySpec(name="hold-then-fail", kind="test", action_horizon=4, image_size=None)

    def predict(self, frame: np.ndarray) -> ActionChunk:
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return ActionChunk.from_action_tensor(np.stack([RIGHT.to_action_vector()] * 4))

    def reset(self) -> None: ...

    def info(self) -> dict[str, Any]:
        return {"policy": "hold-then-fail"}


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("policy crashed")])
def test_ctrl_c_and_errors_release_the_keys(xvfb: str, listener: Listener, error: BaseException) -> None:
    env = DesktopGameEnv("test", _Screen(), KeyboardMousePad("arrows", window=listener.window.id, display=xvfb))
    try:
        config = PlayConfig(mode="sync", max_frames=100, video=False)
        if isinstance(error, KeyboardInterrupt):
            [summary] = play(env, _HoldThenFail(error), config)  # the loop ends the episode on Ctrl-C
            assert summary["interrupted"]
        else:
            with pytest.raises(RuntimeError, match="policy crashed"):
                play(env, _HoldThenFail(error), config)
        assert keys_down(["Right"], display=xvfb) == {"Right"}  # held when the policy stopped
    finally:
        env.close()
    assert listener.events(2) == [("key", "Right", 1), ("key", "Right", 0)]
    assert keys_down(["Right"], display=xvfb) == set()
