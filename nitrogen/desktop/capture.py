"""Find a process's window on X11 and capture its pixels (Linux).

**Which windows belong to a process.** :func:`list_windows` walks the whole window tree of the X
server (and the window manager's ``_NET_CLIENT_LIST``, when there is one) and asks who owns each
window: first the X-Resource extension (``XResQueryClientIds`` with ``LocalClientPIDMask``), which
the server answers from the client's socket for every local client, so it works for the many
games (plain Xlib, old SDL) that set no ``_NET_WM_PID``; then ``_NET_WM_PID`` (set by toolkits,
SDL 2 and Wine), for servers without X-Resource. Windows without ``WM_NAME`` count (their title is
``""``), and so do windows nested under a reparenting window manager's frames, since the whole
tree is walked. A launcher (a shell script that starts the real binary) is handled by also taking
the windows of the process's descendants (``include_children``, the default).

**Which one is the game.** Among the process's windows the largest mapped, viewable one wins,
see :func:`nitrogen.desktop.window.choose_window`. Geometry is the absolute position and size of
the client area, without decorations. :func:`wait_for_window` polls until it appears (games often
open their window seconds after they start) and, on timeout, raises an error that lists what it
did find.

**Fullscreen.** X11 has no exclusive fullscreen that hides a window from capture (the Windows
problem of the original's issue #38): a fullscreen X11 window is an ordinary top-level window
(override-redirect, or marked ``_NET_WM_STATE_FULLSCREEN`` by a window manager) that covers the
screen. It is found the same way, as the largest window of its process, and captured from the
screen like any other.

:class:`ScreenCapture` grabs a screen region with ``mss`` and returns RGB ``uint8`` arrays of shape
``(H, W, 3)``. The region is clipped to the screen. Given a window to ``follow`` (as
:meth:`ScreenCapture.for_process` does), it reads the window's geometry before every grab, so the
capture follows the window when it moves or is resized.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import psutil

from .errors import DisplayUnavailableError, WindowNotFoundError
from .window import Region, WindowInfo, choose_window, clip_region

__all__ = ["ScreenCapture", "find_window", "list_windows", "top_level_windows", "wait_for_window", "window_owner"]

_TREE_DEPTH = 8
"""How deep the window tree is walked: top levels, reparenting frames and a few levels of children."""

_LISTED = 10


def _display_name(display: str | None) -> str:
    name = display if display is not None else os.environ.get("DISPLAY", "")
    if not name:
        raise DisplayUnavailableError(
            "DISPLAY is not set: run inside an X11 session (XWayland counts), pass display=':0', "
            "or start a virtual server such as `Xvfb :99` and set DISPLAY=:99"
        )
    return name


def _connect(display: str | None) -> Any:
    from Xlib import display as xdisplay
    from Xlib import error as xerror

    name = _display_name(display)
    try:
        return xdisplay.Display(name)
    except (xerror.DisplayError, OSError) as exc:
        raise DisplayUnavailableError(f"cannot connect to X display {name!r}: {exc}") from exc


def _walk(window: Any, depth: int) -> Iterator[Any]:
    from Xlib import error as xerror

    if depth == 0:
        return
    try:
        children = window.query_tree().children
    except xerror.XError:
        return
    for child in children:
        yield child
        yield from _walk(child, depth - 1)


def _cardinal(disp: Any, window: Any, atom_name: str) -> list[int]:
    from Xlib import X
    from Xlib import error as xerror

    try:
        prop = window.get_full_property(disp.intern_atom(atom_name), X.AnyPropertyType)
    except xerror.XError:
        return []
    return [int(v) for v in prop.value] if prop is not None else []


def _title(disp: Any, window: Any) -> str:
    from Xlib import error as xerror

    try:
        prop = window.get_full_property(disp.intern_atom("_NET_WM_NAME"), disp.intern_atom("UTF8_STRING"))
        if prop is not None and prop.value:
            value = prop.value
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        name = window.get_wm_name()
    except xerror.XError:
        return ""
    if isinstance(name, bytes):
        return name.decode("latin-1")
    return name or ""


def _geometry(root: Any, window: Any) -> tuple[int, int, int, int]:
    """``(x, y, width, height)`` of ``window``'s client area, in root (screen) coordinates."""
    geom = window.get_geometry()
    origin = root.translate_coords(window, 0, 0)
    return int(origin.x), int(origin.y), int(geom.width), int(geom.height)


def _info(disp: Any, root: Any, window: Any, pid: int | None = None) -> WindowInfo | None:
    from Xlib import X
    from Xlib import error as xerror

    try:
        attrs = window.get_attributes()
        x, y, width, height = _geometry(root, window)
    except xerror.XError:
        return None  # the window went away while we looked at it
    return WindowInfo(
        id=int(window.id),
        title=_title(disp, window),
        x=x,
        y=y,
        width=width,
        height=height,
        visible=attrs.map_state == X.IsViewable,
        pid=pid,
    )


def _xres_pid(disp: Any, window: Any) -> int | None:
    """The PID of the local client that created ``window``, from the X-Resource extension."""
    from Xlib import error as xerror
    from Xlib.ext import res

    try:
        reply = disp.res_query_client_ids([{"client": int(window.id), "mask": res.LocalClientPIDMask}])
    except xerror.XError:
        return None
    for value in reply.ids:
        if value.spec.mask & res.LocalClientPIDMask and value.value:
            return int(value.value[0])
    return None


def window_owner(disp: Any, window: Any, *, xres: bool | None = None) -> int | None:
    """The PID owning ``window``: X-Resource's client PID, else ``_NET_WM_PID``, else ``None``."""
    if xres is None:
        xres = disp.has_extension("X-Resource")
    pid = _xres_pid(disp, window) if xres else None
    if pid is None:
        owner = _cardinal(disp, window, "_NET_WM_PID")
        pid = owner[0] if owner else None
    return pid


def _pids_of(pid: int, include_children: bool) -> set[int]:
    pids = {pid}
    if include_children:
        try:
            pids |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            pass
    return pids


def _all_windows(disp: Any, root: Any) -> dict[int, Any]:
    ids: dict[int, Any] = {}
    for wid in _cardinal(disp, root, "_NET_CLIENT_LIST"):
        ids.setdefault(wid, disp.create_resource_object("window", wid))
    for window in _walk(root, _TREE_DEPTH):
        ids.setdefault(int(window.id), window)
    return ids


def list_windows(pid: int, *, display: str | None = None, include_children: bool = True) -> list[WindowInfo]:
    """Every window owned by ``pid`` (or, by default, one of its descendants); see the module docstring."""
    pids = _pids_of(pid, include_children)
    disp = _connect(display)
    try:
        root = disp.screen().root
        xres = disp.has_extension("X-Resource")
        found = []
        for window in _all_windows(disp, root).values():
            owner = window_owner(disp, window, xres=xres)
            if owner is not None and owner in pids:
                info = _info(disp, root, window, owner)
                if info is not None:
                    found.append(info)
        return found
    finally:
        disp.close()


def top_level_windows(*, display: str | None = None) -> list[WindowInfo]:
    """The mapped top-level windows of the display (children of the root) with their owners."""
    disp = _connect(display)
    try:
        root = disp.screen().root
        xres = disp.has_extension("X-Resource")
        out = []
        for window in root.query_tree().children:
            info = _info(disp, root, window, window_owner(disp, window, xres=xres))
            if info is not None and info.visible:
                out.append(info)
        return out
    finally:
        disp.close()


def _describe(windows: Sequence[WindowInfo]) -> str:
    def one(w: WindowInfo) -> str:
        title = (w.title[:40] + "...") if len(w.title) > 40 else w.title
        state = "viewable" if w.visible else "unmapped"
        return f"  0x{w.id:x} {title!r} {w.width}x{w.height}+{w.x}+{w.y} {state}, pid {w.pid}"

    lines = [one(w) for w in windows[:_LISTED]]
    if len(windows) > _LISTED:
        lines.append(f"  ... and {len(windows) - _LISTED} more")
    return "\n".join(lines) if lines else "  (none)"


def find_window(
    pid: int,
    *,
    display: str | None = None,
    title_hint: str | None = None,
    include_children: bool = True,
    timeout: float = 0.0,
    poll_s: float = 0.1,
) -> WindowInfo:
    """The game window of process ``pid``: its largest visible window (ties: title contains ``title_hint``).

    With ``timeout > 0`` it waits that many seconds for the window to appear (see
    :func:`wait_for_window`). Raises :class:`DisplayUnavailableError` without a reachable X display
    and :class:`WindowNotFoundError` when the process has no usable window; the message lists the
    process's windows and, when it has none, the display's top-level windows with their owners.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        windows = list_windows(pid, display=display, include_children=include_children)
        try:
            return choose_window(windows, title_hint)
        except WindowNotFoundError:
            if time.monotonic() >= deadline or not psutil.pid_exists(pid):
                break
        time.sleep(poll_s)  # the game has not opened its window yet
    scope = "it or its children" if include_children else "it"
    waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
    if windows:
        raise WindowNotFoundError(f"process {pid} has only empty windows{waited}:\n{_describe(windows)}")
    raise WindowNotFoundError(
        f"no X11 window is owned by process {pid} ({scope}; by X-Resource client PID or _NET_WM_PID){waited}; "
        "the program may not have opened its window yet, or may run on another display. "
        f"Top-level windows on this display:\n{_describe(top_level_windows(display=display))}"
    )


def wait_for_window(
    pid: int,
    *,
    timeout: float = 10.0,
    display: str | None = None,
    title_hint: str | None = None,
    include_children: bool = True,
) -> WindowInfo:
    """:func:`find_window`, polling up to ``timeout`` seconds for a window that appears late."""
    return find_window(pid, display=display, title_hint=title_hint, include_children=include_children, timeout=timeout)


RegionLike = Region | WindowInfo | Mapping[str, int] | Sequence[int]


def as_region(region: RegionLike) -> Region:
    """A :class:`Region` from a Region, a WindowInfo, an mss-style dict, or ``(left, top, width, height)``."""
    if isinstance(region, Region):
        return region
    if isinstance(region, WindowInfo):
        return region.region
    if isinstance(region, Mapping):
        return Region(int(region["left"]), int(region["top"]), int(region["width"]), int(region["height"]))
    left, top, width, height = (int(v) for v in region)
    return Region(left, top, width, height)


class ScreenCapture:
    """Grabs one screen region as RGB frames; ``region=None`` grabs the whole (virtual) screen.

    With ``follow`` (an X11 window id, Linux), the region is the window's client area, read again
    before every grab, so the capture follows the window when it moves or is resized (frames then
    change size); a window that has gone raises :class:`WindowNotFoundError`. The ``mss`` handle
    (and the X connection that follows the window) is opened on the first :meth:`grab`, in the
    grabbing thread, and closed by :meth:`close` or the context manager.
    """

    def __init__(
        self, region: RegionLike | None = None, *, display: str | None = None, follow: int | None = None
    ) -> None:
        self.requested = as_region(region) if region is not None else None
        if self.requested is not None and (self.requested.width <= 0 or self.requested.height <= 0):
            raise ValueError(f"empty capture region {self.requested}")
        self.display = display
        self.follow = follow
        self.region: Region | None = None
        self._screen: Region | None = None
        self._sct: Any = None
        self._xdisp: Any = None

    @classmethod
    def for_process(
        cls, pid: int, *, display: str | None = None, title_hint: str | None = None, timeout: float = 0.0
    ) -> ScreenCapture:
        """A capture that follows the window :func:`find_window` picks for ``pid``."""
        window = find_window(pid, display=display, title_hint=title_hint, timeout=timeout)
        return cls(window, display=display, follow=window.id)

    def _open(self) -> Any:
        if self._sct is None:
            import mss
            from mss.exception import ScreenShotError

            kwargs: dict[str, Any] = {}
            if sys.platform.startswith("linux"):
                kwargs["display"] = _display_name(self.display)
            try:
                factory = getattr(mss, "MSS", None) or mss.mss  # mss >= 10.2 deprecates mss.mss
                sct = factory(**kwargs)
                screen = sct.monitors[0]
            except ScreenShotError as exc:
                raise DisplayUnavailableError(f"cannot capture the screen: {exc}") from exc
            self._screen = as_region(screen)
            try:
                self.region = clip_region(self.requested, screen) if self.requested is not None else self._screen
            except ValueError:
                sct.close()
                raise
            self._sct = sct
        return self._sct

    def _track(self) -> None:
        """Move the region to where the followed window is now."""
        from Xlib import error as xerror

        if self._xdisp is None:
            self._xdisp = _connect(self.display)
            self._xwindow = self._xdisp.create_resource_object("window", self.follow)
        try:
            x, y, width, height = _geometry(self._xdisp.screen().root, self._xwindow)
        except xerror.XError:
            raise WindowNotFoundError(f"the captured window 0x{self.follow:x} has gone") from None
        now = Region(x, y, width, height)
        if now != self.requested:
            assert self._screen is not None
            self.region = clip_region(now, self._screen)
            self.requested = now

    def grab(self) -> np.ndarray:
        """One frame of the region: ``uint8`` RGB, shape ``(height, width, 3)``, C-contiguous."""
        sct = self._open()
        if self.follow is not None:
            self._track()
        assert self.region is not None
        shot = sct.grab(self.region.as_mss())
        bgra = np.asarray(shot, dtype=np.uint8)
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)

    def close(self) -> None:
        if self._sct is not None:
            self._sct.close()
            self._sct = None
        if self._xdisp is not None:
            self._xdisp.close()
            self._xdisp = None

    def __enter__(self) -> ScreenCapture:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
