"""Find a process's window on X11 and capture its pixels (Linux).

:func:`find_window` reads ``_NET_WM_PID`` (set by toolkits, SDL and Wine) on the windows of the
X server: the window manager's ``_NET_CLIENT_LIST`` when there is one, and the top levels of the
window tree (three levels deep, which covers reparenting window managers). Among the windows of the
process (and, by default, of its child processes, for games started by a launcher) the largest
visible one wins, see :func:`nitrogen.desktop.window.choose_window`. Geometry is the absolute
position and size of the client area, without decorations.

:class:`ScreenCapture` grabs a screen region with ``mss`` and returns RGB ``uint8`` arrays of shape
``(H, W, 3)``. The region is clipped to the screen at the first grab, so a window partly off
screen still captures (its visible part).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import psutil

from .errors import DisplayUnavailableError, WindowNotFoundError
from .window import Region, WindowInfo, choose_window, clip_region

__all__ = ["ScreenCapture", "find_window", "list_windows"]

_TREE_DEPTH = 3


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


def _info(disp: Any, root: Any, window: Any) -> WindowInfo | None:
    from Xlib import X
    from Xlib import error as xerror

    try:
        attrs = window.get_attributes()
        geom = window.get_geometry()
        origin = root.translate_coords(window, 0, 0)
    except xerror.XError:
        return None  # the window went away while we looked at it
    return WindowInfo(
        id=int(window.id),
        title=_title(disp, window),
        x=int(origin.x),
        y=int(origin.y),
        width=int(geom.width),
        height=int(geom.height),
        visible=attrs.map_state == X.IsViewable,
    )


def _pids_of(pid: int, include_children: bool) -> set[int]:
    pids = {pid}
    if include_children:
        try:
            pids |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            pass
    return pids


def list_windows(pid: int, *, display: str | None = None, include_children: bool = True) -> list[WindowInfo]:
    """Every window whose ``_NET_WM_PID`` is ``pid`` (or, by default, one of its descendants)."""
    pids = _pids_of(pid, include_children)
    disp = _connect(display)
    try:
        root = disp.screen().root
        ids: dict[int, Any] = {}
        for wid in _cardinal(disp, root, "_NET_CLIENT_LIST"):
            ids.setdefault(wid, disp.create_resource_object("window", wid))
        for window in _walk(root, _TREE_DEPTH):
            ids.setdefault(int(window.id), window)
        found = []
        for window in ids.values():
            owner = _cardinal(disp, window, "_NET_WM_PID")
            if owner and owner[0] in pids:
                info = _info(disp, root, window)
                if info is not None:
                    found.append(info)
        return found
    finally:
        disp.close()


def find_window(
    pid: int, *, display: str | None = None, title_hint: str | None = None, include_children: bool = True
) -> WindowInfo:
    """The game window of process ``pid``: its largest visible window (ties: title contains ``title_hint``).

    Raises :class:`DisplayUnavailableError` without a reachable X display and
    :class:`WindowNotFoundError` when the process has no usable window.
    """
    windows = list_windows(pid, display=display, include_children=include_children)
    if not windows:
        scope = "it or its children" if include_children else "it"
        raise WindowNotFoundError(
            f"no X11 window has _NET_WM_PID={pid} ({scope}); the program may not have opened its window "
            "yet, may not set _NET_WM_PID, or may run on another display"
        )
    try:
        return choose_window(windows, title_hint)
    except WindowNotFoundError:
        raise WindowNotFoundError(f"process {pid} has only empty windows: {windows}") from None


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

    The ``mss`` handle is opened on the first :meth:`grab` (in the grabbing thread) and closed by
    :meth:`close` or the context manager.
    """

    def __init__(self, region: RegionLike | None = None, *, display: str | None = None) -> None:
        self.requested = as_region(region) if region is not None else None
        if self.requested is not None and (self.requested.width <= 0 or self.requested.height <= 0):
            raise ValueError(f"empty capture region {self.requested}")
        self.display = display
        self.region: Region | None = None
        self._sct: Any = None

    @classmethod
    def for_process(cls, pid: int, *, display: str | None = None, title_hint: str | None = None) -> ScreenCapture:
        """A capture of the window :func:`find_window` picks for ``pid``."""
        return cls(find_window(pid, display=display, title_hint=title_hint), display=display)

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
            try:
                self.region = clip_region(self.requested, screen) if self.requested is not None else as_region(screen)
            except ValueError:
                sct.close()
                raise
            self._sct = sct
        return self._sct

    def grab(self) -> np.ndarray:
        """One frame of the region: ``uint8`` RGB, shape ``(height, width, 3)``, C-contiguous."""
        sct = self._open()
        assert self.region is not None
        shot = sct.grab(self.region.as_mss())
        bgra = np.asarray(shot, dtype=np.uint8)
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)

    def close(self) -> None:
        if self._sct is not None:
            self._sct.close()
            self._sct = None

    def __enter__(self) -> ScreenCapture:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
