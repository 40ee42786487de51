"""Exceptions raised by :mod:`nitrogen.desktop`; all derive from :class:`nitrogen.errors.NitrogenError`."""

from __future__ import annotations

from ..errors import NitrogenError


class DesktopError(NitrogenError):
    """Base class for errors about the local desktop: processes, windows, screens and pads."""


class ProcessNotFoundError(DesktopError, LookupError):
    """No running process matches; ``candidates`` holds close matches (possibly empty)."""

    def __init__(self, message: str, candidates: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class AmbiguousProcessError(DesktopError, LookupError):
    """Several running processes match; ``candidates`` holds all of them."""

    def __init__(self, message: str, candidates: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class WindowNotFoundError(DesktopError, LookupError):
    """A process has no usable (mapped, non-empty) window."""


class DisplayUnavailableError(DesktopError, RuntimeError):
    """No X display can be reached (``DISPLAY`` unset, or the server refuses the connection)."""


class PadUnavailableError(DesktopError, RuntimeError):
    """A virtual gamepad cannot be created here; the message says what is missing."""


class PlatformNotSupportedError(DesktopError, RuntimeError):
    """The requested backend does not run on this operating system."""
