"""ProcessPauser on a real `sleep 30` child: stopped, then running again, always cleaned up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from nitrogen.desktop.errors import ProcessNotFoundError
from nitrogen.desktop.pause import Pauser, ProcessPauser

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP/SIGCONT are POSIX-only")


def wait_status(pid: int, wanted: set[str], timeout: float = 5.0) -> str:
    """Poll psutil until the status is one of ``wanted`` (signals are delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    status = psutil.Process(pid).status()
    while status not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        status = psutil.Process(pid).status()
    return status


RUNNING = {psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING}  # `sleep` is running but mostly waiting


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    if shutil.which("sleep") is None:
        pytest.skip("needs the `sleep` program")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # first, in case a failed test left it stopped
        proc.kill()
        proc.wait(timeout=5)


def test_pause_then_resume(child: subprocess.Popen[bytes]) -> None:
    pauser = ProcessPauser(child.pid)
    assert isinstance(pauser, Pauser)
    pauser.pause()
    pauser.pause()  # idempotent
    assert pauser.is_paused
    assert wait_status(child.pid, {psutil.STATUS_STOPPED}) == psutil.STATUS_STOPPED
    pauser.resume()
    assert not pauser.is_paused
    assert wait_status(child.pid, RUNNING) in RUNNING
    pauser.close()


def test_context_manager_resumes_on_error(child: subprocess.Popen[bytes]) -> None:
    with pytest.raises(RuntimeError, match="boom"), ProcessPauser(child.pid) as pauser:
        with pauser.paused():
            assert wait_status(child.pid, {psutil.STATUS_STOPPED}) == psutil.STATUS_STOPPED
        assert wait_status(child.pid, RUNNING) in RUNNING
        pauser.pause()
        raise RuntimeError("boom")
    assert not pauser.is_paused
    assert wait_status(child.pid, RUNNING) in RUNNING


_PAUSE_AND_HANG = """
import sys, time
from nitrogen.desktop.pause import ProcessPauser
pauser = ProcessPauser(int(sys.argv[1]))
pauser.pause()
print("paused", pauser._guardian.pid, flush=True)
time.sleep(60)
"""


def test_a_sigkilled_pauser_leaves_the_game_running(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL runs no cleanup; the guardian child sees the pipe close and sends SIGCONT."""
    player = subprocess.Popen(
        [sys.executable, "-c", _PAUSE_AND_HANG, str(child.pid)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = player.stdout.readline().split()
        assert line[0] == "paused", line
        guardian = int(line[1])
        assert wait_status(child.pid, {psutil.STATUS_STOPPED}) == psutil.STATUS_STOPPED
        player.kill()
        player.wait(timeout=10)
        assert wait_status(child.pid, RUNNING, timeout=10) in RUNNING
        try:
            psutil.Process(guardian).wait(timeout=10)  # its job done, the guardian exits
        except psutil.NoSuchProcess:
            pass
    finally:
        player.kill()
        player.wait(timeout=10)


def test_a_dismissed_guardian_touches_nothing(child: subprocess.Popen[bytes]) -> None:
    from nitrogen.desktop.guardian import Guardian
    from nitrogen.desktop.pause import start_time

    os.kill(child.pid, signal.SIGSTOP)  # stopped by someone else: the guardian must leave it so
    assert wait_status(child.pid, {psutil.STATUS_STOPPED}) == psutil.STATUS_STOPPED
    guardian = Guardian(["cont", child.pid, start_time(child.pid)])
    guardian.dismiss()  # returns once the guardian has exited
    guardian.dismiss()
    assert psutil.Process(child.pid).status() == psutil.STATUS_STOPPED


def test_the_guardian_leaves_a_reused_pid_alone(child: subprocess.Popen[bytes]) -> None:
    """A start time that no longer matches means the PID now names another process."""
    from nitrogen.desktop.guardian import Guardian

    os.kill(child.pid, signal.SIGSTOP)
    assert wait_status(child.pid, {psutil.STATUS_STOPPED}) == psutil.STATUS_STOPPED
    guardian = Guardian(["cont", child.pid, "1"])  # started at tick 1 after boot: not this process
    assert guardian._proc is not None and guardian._proc.stdin is not None
    guardian._proc.stdin.close()  # end-of-file, as when the parent dies
    guardian._proc.wait(timeout=10)
    assert psutil.Process(child.pid).status() == psutil.STATUS_STOPPED
    guardian = Guardian(["cont", child.pid])  # and without a start time it resumes it
    guardian._proc.stdin.close()
    guardian._proc.wait(timeout=10)
    assert wait_status(child.pid, RUNNING) in RUNNING


def test_a_guardian_that_cannot_start_is_a_warning_not_an_error(child, monkeypatch, caplog) -> None:
    import nitrogen.desktop.guardian as guardian_module

    def no_children(*args, **kwargs):
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(guardian_module.subprocess, "Popen", no_children)
    with caplog.at_level("WARNING", logger="nitrogen.desktop.guardian"), ProcessPauser(child.pid) as pauser:
        pauser.pause()
        assert wait_status(child.pid, {psutil.STATUS_STOPPED}) == psutil.STATUS_STOPPED
        pauser.resume()
        pauser.pause()  # tried once, not at every pause
    assert wait_status(child.pid, RUNNING) in RUNNING
    assert len([r for r in caplog.records if "no guardian" in r.getMessage()]) == 1


def test_dead_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pauser = ProcessPauser(proc.pid)
    with pytest.raises(ProcessNotFoundError):
        pauser.pause()
    pauser.resume()  # nothing to do, no error


def test_rejects_bad_pids() -> None:
    with pytest.raises(ValueError, match="current process"):
        ProcessPauser(os.getpid())
    with pytest.raises(ValueError):
        ProcessPauser(0)
    with pytest.raises(ValueError):
        ProcessPauser(True)
