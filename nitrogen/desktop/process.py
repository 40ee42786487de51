"""Find the game's process by PID or by name.

A name matches case-insensitively and with or without a trailing ``.exe``, so ``celeste``,
``Celeste.exe`` and ``CELESTE`` all find a process called ``Celeste.exe`` (a Wine/Proton game) or
``Celeste`` (a native one). Besides ``Process.name()`` the base name of ``cmdline[0]`` is compared
too, with ``/`` and ``\\`` both taken as separators, which is how Windows paths under Wine look.

The matching is pure (:func:`match_processes` on :class:`ProcessCandidate` snapshots) so that it
can be tested without the process table; :func:`find_process` snapshots the table and resolves.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from .errors import AmbiguousProcessError, ProcessNotFoundError

__all__ = ["ProcessCandidate", "find_process", "match_processes", "normalize_process_name", "snapshot_processes"]

_MAX_LISTED = 10
_CMDLINE_CHARS = 100


@dataclass(frozen=True)
class ProcessCandidate:
    """What the lookup knows of one process: enough to match it and to show it to a person."""

    pid: int
    name: str
    cmdline: tuple[str, ...] = ()

    def names(self) -> frozenset[str]:
        """The normalized names this process answers to (its name, the base name of ``cmdline[0]``)."""
        names = {normalize_process_name(self.name)}
        if self.cmdline and self.cmdline[0]:
            names.add(normalize_process_name(re.split(r"[\\/]", self.cmdline[0])[-1]))
        names.discard("")
        return frozenset(names)

    def describe(self) -> str:
        """One line: ``pid name cmdline`` (the command line shortened)."""
        cmd = " ".join(self.cmdline)
        if len(cmd) > _CMDLINE_CHARS:
            cmd = cmd[: _CMDLINE_CHARS - 3] + "..."
        return f"pid {self.pid}: {self.name!r} {cmd}".rstrip()


def normalize_process_name(name: str) -> str:
    """Lower-case, strip surrounding whitespace and one trailing ``.exe``."""
    return name.strip().lower().removesuffix(".exe")


def snapshot_processes() -> list[ProcessCandidate]:
    """The current process table; processes that vanish or deny access are kept with what is known."""
    out: list[ProcessCandidate] = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        info = proc.info
        out.append(ProcessCandidate(proc.pid, info.get("name") or "", tuple(info.get("cmdline") or ())))
    return out


def match_processes(query: str, candidates: Iterable[ProcessCandidate]) -> list[ProcessCandidate]:
    """All candidates whose name matches ``query`` (see the module docstring), sorted by PID."""
    key = normalize_process_name(query)
    return sorted((c for c in candidates if key in c.names()), key=lambda c: c.pid)


def _close_candidates(query: str, candidates: list[ProcessCandidate]) -> list[ProcessCandidate]:
    key = normalize_process_name(query)
    by_key: dict[str, list[ProcessCandidate]] = {}
    for c in candidates:
        for k in c.names():
            by_key.setdefault(k, []).append(c)
    names = set(difflib.get_close_matches(key, list(by_key), n=5, cutoff=0.6))
    if len(key) >= 3:
        names |= {k for k in by_key if key in k}
    close = {c.pid: c for k in sorted(names) for c in by_key[k]}
    return sorted(close.values(), key=lambda c: c.pid)[:_MAX_LISTED]


def _listing(candidates: list[ProcessCandidate]) -> str:
    lines = [f"  {c.describe()}" for c in candidates[:_MAX_LISTED]]
    if len(candidates) > _MAX_LISTED:
        lines.append(f"  ... and {len(candidates) - _MAX_LISTED} more")
    return "\n".join(lines)


def _as_pid(name_or_pid: str | int) -> int | None:
    if isinstance(name_or_pid, bool):
        raise TypeError("a process is named by a PID (int) or a name (str), not a bool")
    if isinstance(name_or_pid, int):
        return name_or_pid
    if isinstance(name_or_pid, str):
        text = name_or_pid.strip()
        return int(text) if text.isdigit() else None
    raise TypeError(f"a process is named by a PID (int) or a name (str), got {type(name_or_pid).__name__}")


def find_process(name_or_pid: str | int, *, candidates: Iterable[ProcessCandidate] | None = None) -> psutil.Process:
    """The one running process named by ``name_or_pid``.

    An int or an all-digit string is a PID and is used directly. Anything else is a process name,
    matched as the module docstring says against ``candidates`` (default: the live process table).

    Raises :class:`ProcessNotFoundError` (with close candidates, by :mod:`difflib` and substring,
    in the message and in ``.candidates``) when nothing matches, and
    :class:`AmbiguousProcessError` (listing pid, name and command line of each) when several do.
    """
    pid = _as_pid(name_or_pid)
    if pid is not None:
        try:
            return psutil.Process(pid)
        except psutil.NoSuchProcess:
            raise ProcessNotFoundError(f"no process with PID {pid}") from None
    query = str(name_or_pid).strip()
    if not query:
        raise ValueError("empty process name")
    table = list(candidates) if candidates is not None else snapshot_processes()
    matches = match_processes(query, table)
    if len(matches) > 1:
        raise AmbiguousProcessError(
            f"{len(matches)} processes match {query!r}; pass a PID instead:\n{_listing(matches)}", tuple(matches)
        )
    if not matches:
        close = _close_candidates(query, table)
        hint = f"; close matches:\n{_listing(close)}" if close else "; no similar process names are running"
        raise ProcessNotFoundError(
            f"no running process named {query!r} (matched case-insensitively, with or without .exe){hint}",
            tuple(close),
        )
    try:
        return psutil.Process(matches[0].pid)
    except psutil.NoSuchProcess:
        raise ProcessNotFoundError(f"process {matches[0].describe()} exited while it was being looked up") from None
