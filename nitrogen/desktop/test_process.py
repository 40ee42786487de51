"""find_process: PIDs, case- and .exe-insensitive names, ambiguity and near misses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nitrogen.desktop.errors import AmbiguousProcessError, ProcessNotFoundError
from nitrogen.desktop.process import ProcessCandidate, find_process, match_processes, normalize_process_name


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `sleep 30` started under a unique short name (a copy of the binary), killed at the end."""
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("needs the `sleep` program")
    name = f"NgSlp{os.getpid() % 100000}"  # < 15 chars, so the kernel's comm holds all of it
    exe = tmp_path / name
    shutil.copy(sleep, exe)
    proc = subprocess.Popen([str(exe), "30"])
    try:
        yield proc, name
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_pid_int_and_digit_string_resolve_directly() -> None:
    assert find_process(os.getpid()).pid == os.getpid()
    assert find_process(f" {os.getpid()} ").pid == os.getpid()


def test_missing_pid() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(ProcessNotFoundError, match=f"PID {dead.pid}"):
        find_process(dead.pid)


def test_rejects_bool_and_other_types() -> None:
    with pytest.raises(TypeError):
        find_process(True)
    with pytest.raises(TypeError):
        find_process(3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        find_process("  ")


def test_name_matches_case_insensitively_with_or_without_exe(sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, name = sleeper
    for query in (name, name.lower(), name.upper() + ".EXE", f"{name}.exe"):
        assert find_process(query).pid == proc.pid


def test_the_current_python_process_is_found_by_its_name() -> None:
    me = psutil.Process()
    candidates = [ProcessCandidate(me.pid, me.name(), tuple(me.cmdline()))]
    assert find_process(me.name().upper(), candidates=candidates).pid == me.pid


def test_two_matches_are_ambiguous_and_listed(sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, name = sleeper
    exe = psutil.Process(proc.pid).exe()
    twin = subprocess.Popen([exe, "30"])
    try:
        with pytest.raises(AmbiguousProcessError) as info:
            find_process(name)
        pids = sorted(c.pid for c in info.value.candidates)  # type: ignore[attr-defined]
        assert pids == sorted([proc.pid, twin.pid])
        msg = str(info.value)
        assert f"pid {proc.pid}" in msg and f"pid {twin.pid}" in msg and "30" in msg
    finally:
        twin.kill()
        twin.wait(timeout=5)


def test_no_match_lists_close_candidates(sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, name = sleeper
    with pytest.raises(ProcessNotFoundError) as info:
        find_process(name[:-1] + "x")  # one letter off
    assert proc.pid in [c.pid for c in info.value.candidates]  # type: ignore[attr-defined]
    assert name in str(info.value)


def test_no_match_without_anything_similar() -> None:
    with pytest.raises(ProcessNotFoundError, match="no similar"):
        find_process("zzqqxx-nothing", candidates=[ProcessCandidate(1, "init")])


def test_pure_matching_uses_name_and_windows_style_cmdline() -> None:
    table = [
        ProcessCandidate(40, "Game.exe", ("C:\\Games\\Game.exe", "-windowed")),
        ProcessCandidate(7, "wine64-preloader", ("Z:\\opt\\Hollow Knight.exe",)),
        ProcessCandidate(9, "gamescope", ("/usr/bin/gamescope",)),
    ]
    assert [c.pid for c in match_processes("game", table)] == [40]
    assert [c.pid for c in match_processes("HOLLOW KNIGHT", table)] == [7]
    assert match_processes("games", table) == []
    assert normalize_process_name(" Foo.EXE ") == "foo"
    assert normalize_process_name("foo.exe.exe") == "foo.exe"
