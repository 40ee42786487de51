"""Platform-neutral window geometry and the choice of the game's window among a process's windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import WindowNotFoundError

__all__ = ["Region", "WindowInfo", "choose_window", "clip_region"]


@dataclass(frozen=True)
class Region:
    """A screen rectangle in absolute pixels (``left``, ``top`` may be negative on multi-monitor)."""

    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height

    def as_mss(self) -> dict[str, int]:
        """The ``{"left", "top", "width", "height"}`` dict that ``mss.grab`` takes."""
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}

    def as_ltrb(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``, as dxcam takes a region."""
        return (self.left, self.top, self.right, self.bottom)


@dataclass(frozen=True)
class WindowInfo:
    """A top-level window: its id (X11 window id or HWND), title and absolute client-area geometry.

    ``pid`` is the process that owns the window, where it is known (X11: the X-Resource
    extension's client PID, else ``_NET_WM_PID``).
    """

    id: int
    title: str
    x: int
    y: int
    width: int
    height: int
    visible: bool = True
    pid: int | None = None

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def region(self) -> Region:
        return Region(self.x, self.y, self.width, self.height)


def choose_window(candidates: Iterable[WindowInfo], title_hint: str | None = None) -> WindowInfo:
    """The game window among one process's windows.

    Windows with no area are ignored. The rest are ranked by: visible first, then larger area,
    then (on equal area) a title containing ``title_hint`` case-insensitively; remaining ties go to
    the earliest candidate. Raises :class:`WindowNotFoundError` when nothing is left.
    """
    usable = [w for w in candidates if w.area > 0]
    if not usable:
        raise WindowNotFoundError("the process has no window with a non-empty area")
    hint = (title_hint or "").strip().lower()

    def rank(w: WindowInfo) -> tuple[bool, int, bool]:
        return (w.visible, w.area, bool(hint) and hint in w.title.lower())

    return max(usable, key=rank)


def clip_region(region: Region, bounds: Region | Mapping[str, int]) -> Region:
    """``region`` cut to ``bounds`` (e.g. the whole virtual screen); raises ``ValueError`` if nothing is left."""
    if not isinstance(bounds, Region):
        bounds = Region(int(bounds["left"]), int(bounds["top"]), int(bounds["width"]), int(bounds["height"]))
    left, top = max(region.left, bounds.left), max(region.top, bounds.top)
    right, bottom = min(region.right, bounds.right), min(region.bottom, bounds.bottom)
    if right <= left or bottom <= top:
        raise ValueError(f"{region} lies outside the screen {bounds}")
    return Region(left, top, right - left, bottom - top)
