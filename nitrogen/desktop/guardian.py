"""A watchdog process that undoes what a killed ``nitrogen`` left behind in a desktop game.

A ``SIGKILL`` (or the kernel's out-of-memory killer) ends a process with no cleanup at all: a game
it had stopped with ``SIGSTOP`` stays stopped, and an XTEST key it held stays down, since the X
server keeps a fake press after its client goes. A :class:`Guardian` is a small child process
that outlives its parent for exactly that case. It blocks reading a pipe from the parent; the
parent never writes to it until it is done, so the read returns only

* with a byte, from :meth:`Guardian.dismiss`: the parent cleaned up itself, so the guardian exits
  without touching anything (a key the person holds on the real keyboard stays held), or
* at end-of-file: the parent died, and the kernel closed its end of the pipe. The guardian then
  does its one job and exits.

Jobs (``python -m nitrogen.desktop.guardian JOB ...``):

* ``cont PID [START]``: send ``SIGCONT`` to ``PID`` (a no-op on a running process), unless its
  start time (field 22 of ``/proc/PID/stat``, Linux) is no longer ``START``: the PID was reused;
* ``keys DISPLAY CODE...``: release, through XTEST, every listed key code the server has down,
  and every listed mouse button (a code ``button:N``) that is down.

The guardian runs in its own session, so a Ctrl-C in the terminal reaches the parent, which
cleans up and dismisses it, and not the guardian.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["Guardian"]

log = logging.getLogger("nitrogen.desktop.guardian")

_DISMISS = b"x"


class Guardian:
    """Start a guardian for ``job`` (``["cont", PID]`` or ``["keys", DISPLAY, CODE, ...]``)."""

    def __init__(self, job: Sequence[str | int]) -> None:
        args = [str(a) for a in job]
        if not args or args[0] not in ("cont", "keys"):
            raise ValueError(f"a guardian's job is 'cont PID' or 'keys DISPLAY CODE...', got {args!r}")
        self.job = args
        # The child imports this module as the parent found it, however the parent's path was set.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", __name__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C goes to the parent, which dismisses us
        )

    @classmethod
    def start(cls, job: Sequence[str | int]) -> Guardian | None:
        """A guardian for ``job``, or None (with a warning) where no child process can be started:
        the game is then played unguarded rather than not at all."""
        try:
            return cls(job)
        except OSError as exc:
            log.warning("no guardian for %s (%s): a SIGKILL of this process would not undo it", job[0], exc)
            return None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def dismiss(self) -> None:
        """The parent cleaned up itself: the guardian exits doing nothing. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write(_DISMISS)
            proc.stdin.close()
        except OSError:  # it is gone already
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __repr__(self) -> str:
        return f"Guardian(job={self.job!r}, pid={self.pid})"


def _resume(pid: int, started: str | None) -> None:
    from .pause import start_time

    if started is not None and start_time(pid) not in (None, started):
        return  # another process has this PID now
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _release(display: str, codes: Sequence[str]) -> None:
    from Xlib import X
    from Xlib import display as xdisplay
    from Xlib import error as xerror
    from Xlib.ext import xtest

    try:
        disp = xdisplay.Display(display or None)
    except (xerror.DisplayError, OSError):
        return  # the X server is gone: nothing is held there any more
    try:
        keymap = disp.query_keymap()  # 32 bytes: bit k of byte k // 8 is key code k
        buttons = disp.screen().root.query_pointer().mask
        for code in codes:
            if code.startswith("button:"):
                n = int(code.split(":", 1)[1])
                if 1 <= n <= 5 and buttons & (X.Button1Mask << (n - 1)):
                    xtest.fake_input(disp, X.ButtonRelease, n)
            elif 8 <= int(code) <= 255 and keymap[int(code) // 8] & (1 << (int(code) % 8)):
                xtest.fake_input(disp, X.KeyRelease, int(code))
        disp.sync()
    finally:
        disp.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe decides
    if sys.stdin.buffer.read(1) == _DISMISS:
        return 0
    if args[0] == "cont":
        _resume(int(args[1]), args[2] if len(args) > 2 else None)
    elif args[0] == "keys":
        _release(args[1], args[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
