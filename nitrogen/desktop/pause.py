"""Freeze and thaw the game process while the model thinks.

On POSIX a process is paused with ``SIGSTOP`` and resumed with ``SIGCONT``: the game's clock keeps
running in the kernel, but the process makes no progress, so no frames go by unseen while a chunk
of actions is being predicted. (The Windows counterpart, a speed-hack, is in
:mod:`nitrogen.desktop.windows`.)

Use the pauser as a context manager so that the game is never left frozen::

    with ProcessPauser(pid) as pauser:      # nothing paused yet
        while playing:
            with pauser.paused():           # frozen inside, running again after
                chunk = policy.predict(frame)
            play(chunk)
    # on any exit, including an exception, the process is running again

Even a ``SIGKILL`` of this process, which runs no cleanup, does not leave the game stopped: the
first :meth:`ProcessPauser.pause` starts a :class:`~nitrogen.desktop.guardian.Guardian`, a watchdog
child that sends ``SIGCONT`` if this process dies before :meth:`ProcessPauser.close`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol, runtime_checkable

from .errors import PlatformNotSupportedError, ProcessNotFoundError
from .guardian import Guardian

__all__ = ["Pauser", "ProcessPauser", "process_state", "start_time"]


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` (Linux) from the third on (state first); empty where
    there is no such file (another OS, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return []
    # "PID (comm) S ...": comm may hold spaces and parentheses, so split after the last ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` (Linux): ``T`` stopped, ``R`` running, ``S`` sleeping...

    None where there is no such file (another OS, or the process is gone).
    """
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def start_time(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/PID/stat``), or None:
    with the PID it names one process, even after the PID is reused."""
    fields = _stat_fields(pid)
    return fields[19].decode() if len(fields) > 19 else None


@runtime_checkable
class Pauser(Protocol):
    """What a game loop needs to freeze a game: :class:`ProcessPauser` and the Windows placeholder."""

    @property
    def is_paused(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class ProcessPauser:
    """Pause/resume one process (POSIX: ``SIGSTOP``/``SIGCONT``); idempotent, resumes on exit."""

    def __init__(self, pid: int, *, settle_s: float = 1.0, guard: bool = True) -> None:
        if sys.platform == "win32" or not hasattr(signal, "SIGSTOP"):
            raise PlatformNotSupportedError(
                "ProcessPauser needs POSIX signals (SIGSTOP/SIGCONT); on Windows use "
                "nitrogen.desktop.windows.SpeedhackPauser"
            )
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid must be a positive int, got {pid!r}")
        if pid == os.getpid():
            raise ValueError("refusing to pause the current process: it could never resume itself")
        self.pid = pid
        self.settle_s = settle_s
        self.guard = guard
        self._guardian: Guardian | None = None
        self._paused = False

    @property
    def is_paused(self) -> bool:
        """Whether this pauser has stopped the process (and not resumed it since)."""
        return self._paused

    def pause(self) -> None:
        """Stop the process; a no-op when already paused. Raises if the process is gone.

        A signal is delivered asynchronously, so on Linux this then waits (up to ``settle_s``
        seconds) until ``/proc/PID/stat`` shows the process stopped (state ``T``): when it
        returns, the game makes no more progress.
        """
        if self._paused:
            return
        if self.guard and self._guardian is None:
            started = start_time(self.pid)  # so that a reused PID is left alone
            self._guardian = Guardian.start(["cont", self.pid, *([started] if started else [])])  # if we are killed
            self.guard = self._guardian is not None  # a guardian that cannot start is tried once
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            self.close()
            raise ProcessNotFoundError(f"cannot pause PID {self.pid}: no such process") from None
        self._paused = True
        deadline = time.monotonic() + self.settle_s
        while process_state(self.pid) not in (None, "T", "t", "Z", "X") and time.monotonic() < deadline:
            time.sleep(0.0002)  # the kernel is delivering SIGSTOP

    def state(self) -> str | None:
        """The process's state letter from ``/proc`` (``T`` stopped, ``R``, ``S``, ...), or None."""
        return process_state(self.pid)

    def resume(self) -> None:
        """Continue the process; a no-op when not paused or when the process has exited."""
        if not self._paused:
            return
        self._paused = False
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Resume the process and dismiss the guardian; idempotent (``with`` calls it)."""
        try:
            self.resume()
        finally:
            if self._guardian is not None:
                self._guardian.dismiss()
                self._guardian = None

    @contextmanager
    def paused(self) -> Iterator[ProcessPauser]:
        """Paused inside the ``with`` block, resumed after it (also on exceptions)."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def __enter__(self) -> ProcessPauser:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcessPauser(pid={self.pid}, paused={self._paused})"
