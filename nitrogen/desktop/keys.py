"""A keyboard and mouse that plays like a pad: :class:`GamepadState` -> X key and mouse events via XTEST.

:class:`KeyboardMousePad` has the pad interface of :class:`~nitrogen.desktop.uinput_pad.VirtualPad`
(``send``/``reset``/``close``), so :class:`~nitrogen.desktop.env.DesktopGameEnv` drives either.
What a state presses is the :class:`~nitrogen.desktop.keymap.KeyMap`'s business; this module only
talks to the X server:

* **Only changes are sent.** A key (or mouse button) is pressed when its binding becomes held and
  released when it stops being held; a state like the last one sends nothing. Mouse motion is
  relative (XTEST ``MotionNotify`` with ``detail=1``) and its sub-pixel remainder is carried over
  to the next frame, so slow stick deflections still move the pointer.
* **Releases are always sent.** :meth:`close` (also from ``with``, the env's ``close`` and, via
  :func:`weakref.finalize`, interpreter exit) releases every key and button still held. An error
  while sending releases everything before it propagates. (An XTEST press outlives its client:
  the X server keeps the key down after the connection closes, so this matters.) A signal that
  ends the process with no cleanup can leave a key down: ``SIGKILL``, and ``SIGTERM``/``SIGHUP``
  unless handled (``nitrogen play`` turns them into Ctrl-C), and for those a
  :class:`~nitrogen.desktop.guardian.Guardian` (a watchdog child, dismissed by :meth:`close`)
  releases the map's keys and buttons that are down once this process is gone. Each :meth:`send`
  ends with a round trip, so when it returns the server has applied its events.
* **Focus.** Without a window manager (e.g. under Xvfb) no window gets the keyboard focus, so before
  sending keys the pad sets the input focus on the game's window itself whenever the focus is not
  already on it or inside it. Under a window manager it asks once for the window to be activated
  (``_NET_ACTIVE_WINDOW``) and leaves the focus to the window manager after that.
"""

from __future__ import annotations

import logging
import weakref
from types import TracebackType
from typing import Any

from ..gamepad import NEUTRAL, GamepadState
from .errors import DisplayUnavailableError, PadUnavailableError
from .guardian import Guardian
from .keymap import MOUSE_BUTTONS, KeyMap, load_keymap

__all__ = ["KeyboardMousePad", "keys_down"]

log = logging.getLogger("nitrogen.desktop.keys")


def _release(disp: Any, held: dict[str, tuple[str, int]]) -> None:
    """Release every held key and button (idempotent; the finalizer and :meth:`close` share it)."""
    from Xlib import X
    from Xlib import error as xerror
    from Xlib.ext import xtest

    if not held:
        return
    try:
        for kind, code in list(held.values()):
            xtest.fake_input(disp, X.KeyRelease if kind == "key" else X.ButtonRelease, code)
        disp.sync()
    except (xerror.XError, xerror.ConnectionClosedError, OSError):
        log.debug("X server gone while releasing keys: nothing is held there any more")
    held.clear()


class KeyboardMousePad:
    """Plays :class:`GamepadState` frames as XTEST key and mouse events on ``display``.

    ``window`` is the game's X window id (from :func:`~nitrogen.desktop.capture.find_window`); it
    gets the input focus (see the module docstring) and, for a map with mouse bindings, the pointer
    starts at its centre. ``keymap`` is a :class:`KeyMap`, a preset name or a file. ``guard``
    starts the guardian that releases the keys if this process is killed.
    """

    def __init__(
        self,
        keymap: KeyMap | str = "arrows",
        *,
        window: int | None = None,
        display: str | None = None,
        focus: bool = True,
        guard: bool = True,
    ) -> None:
        from Xlib import XK

        from .capture import _connect

        self.keymap = load_keymap(keymap)
        self.window_id = window
        self._disp = _connect(display)
        try:
            if not self._disp.has_extension("XTEST"):
                raise PadUnavailableError("the X server has no XTEST extension, so keys cannot be sent")
            self._codes: dict[str, tuple[str, int]] = {}
            missing = []
            for binding in sorted(self.keymap.bindings()):
                if binding in MOUSE_BUTTONS:
                    self._codes[binding] = ("button", MOUSE_BUTTONS[binding])
                    continue
                keycode = self._disp.keysym_to_keycode(XK.string_to_keysym(binding))
                if keycode == 0:
                    missing.append(binding)
                self._codes[binding] = ("key", keycode)
            if missing:
                raise PadUnavailableError(
                    f"the X server's keyboard map has no key for {', '.join(missing)} (keymap {self.keymap.name!r})"
                )
            self._root = self._disp.screen().root
            self._window = self._disp.create_resource_object("window", window) if window is not None else None
            self._focus = focus and self._window is not None
            self._wm = self._has_window_manager()
            self._activated = False
        except BaseException:
            self._disp.close()
            raise
        self._held: dict[str, tuple[str, int]] = {}
        self._carry = [0.0, 0.0]
        self._closed = False
        self._finalizer = weakref.finalize(self, _release, self._disp, self._held)
        codes = [str(code) if kind == "key" else f"button:{code}" for kind, code in self._codes.values()]
        self._guardian = Guardian.start(["keys", self._disp.get_display_name(), *codes]) if guard else None
        if self.keymap.mouse is not None or any(b in MOUSE_BUTTONS for b in self.keymap.bindings()):
            self._warp_to_window()

    @property
    def held(self) -> frozenset[str]:
        """The bindings (keysym names, ``mouse:*``) this pad holds down now."""
        return frozenset(self._held)

    def _has_window_manager(self) -> bool:
        prop = self._root.get_full_property(self._disp.intern_atom("_NET_SUPPORTING_WM_CHECK"), 0)
        return prop is not None and len(prop.value) > 0

    def _warp_to_window(self) -> None:
        if self._window is None:
            return
        from Xlib import error as xerror

        try:
            geom = self._window.get_geometry()
            self._window.warp_pointer(geom.width // 2, geom.height // 2)
        except xerror.XError:
            pass

    def _ensure_focus(self) -> None:
        from Xlib import X
        from Xlib import error as xerror
        from Xlib.protocol import event

        if not self._focus or self._window is None:
            return
        try:
            if self._wm:
                if not self._activated:  # ask the window manager once, then leave focus to it
                    atom = self._disp.intern_atom("_NET_ACTIVE_WINDOW")
                    msg = event.ClientMessage(
                        window=self._window, client_type=atom, data=(32, [1, X.CurrentTime, 0, 0, 0])
                    )
                    self._root.send_event(msg, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
                    self._activated = True
                return
            focus = self._disp.get_input_focus().focus
            if isinstance(focus, int) or not self._inside(focus):
                self._window.set_input_focus(X.RevertToParent, X.CurrentTime)
        except xerror.XError as exc:
            raise DisplayUnavailableError(f"cannot focus the game window 0x{self.window_id:x}: {exc}") from exc

    def _inside(self, window: Any) -> bool:
        """Whether ``window`` is the game window or one of its descendants."""
        target = int(self._window.id)
        root = int(self._root.id)
        for _ in range(16):
            wid = int(window.id)
            if wid == target:
                return True
            if wid in (root, 0):
                return False
            window = window.query_tree().parent
        return False

    def send(self, state: GamepadState) -> list[tuple[str, object, object]]:
        """Send what changed since the last state; returns the events: ``(kind, what, value)``.

        ``("key", "Left", 1)`` is a press, ``("key", "Left", 0)`` a release, ``("button", 1, 1)`` a
        mouse button, ``("motion", dx, dy)`` relative pointer motion in pixels.
        """
        from Xlib import X
        from Xlib.ext import xtest

        if not isinstance(state, GamepadState):
            raise TypeError(f"send() takes a GamepadState, got {type(state).__name__}")
        if self._closed:
            raise RuntimeError("this KeyboardMousePad is closed")
        target = self.keymap.bindings_for(state)
        releases = sorted(set(self._held) - target)
        presses = sorted(target - set(self._held))
        dx, dy = self.keymap.mouse_motion(state)
        self._carry[0] += dx
        self._carry[1] += dy
        mx, my = int(self._carry[0]), int(self._carry[1])  # whole pixels now, the rest next frame
        self._carry[0] -= mx
        self._carry[1] -= my
        events: list[tuple[str, object, object]] = []
        if not (releases or presses or mx or my):
            return events
        try:
            if presses:
                self._ensure_focus()
            for binding in releases:
                kind, code = self._held.pop(binding)
                xtest.fake_input(self._disp, X.KeyRelease if kind == "key" else X.ButtonRelease, code)
                events.append((kind, binding if kind == "key" else code, 0))
            if mx or my:
                xtest.fake_input(self._disp, X.MotionNotify, detail=1, x=mx, y=my)
                events.append(("motion", mx, my))
            for binding in presses:
                kind, code = self._codes[binding]
                xtest.fake_input(self._disp, X.KeyPress if kind == "key" else X.ButtonPress, code)
                self._held[binding] = (kind, code)
                events.append((kind, binding if kind == "key" else code, 1))
            # A round trip, not a flush: python-xlib's flush() may return with requests still in
            # its buffer when the socket is not writable at once (a busy X server), and close()
            # then drops them, a lost release. After sync() the server has applied the events.
            self._disp.sync()
        except BaseException:
            self.release_all()
            raise
        return events

    def reset(self) -> list[tuple[str, object, object]]:
        """Release everything (a neutral state)."""
        self._carry = [0.0, 0.0]
        return self.send(NEUTRAL)

    def release_all(self) -> None:
        """Release every key and button of the keymap that this pad holds, then wait for the server."""
        _release(self._disp, self._held)

    def close(self) -> None:
        """Release everything and close the X connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.release_all()
        finally:
            self._finalizer.detach()
            self._disp.close()
            if self._guardian is not None:
                self._guardian.dismiss()
                self._guardian = None

    def __enter__(self) -> KeyboardMousePad:  # noqa: PYI034 (typing.Self needs 3.11; we support 3.10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def keys_down(keysyms: list[str] | frozenset[str], *, display: str | None = None) -> set[str]:
    """Which of ``keysyms`` the X server has down now (``XQueryKeymap``), from a fresh connection."""
    from Xlib import XK

    from .capture import _connect

    disp = _connect(display)
    try:
        bitmap = disp.query_keymap()  # 32 bytes: bit k of byte k // 8 is keycode k
        down = set()
        for name in keysyms:
            code = disp.keysym_to_keycode(XK.string_to_keysym(name))
            if code and bitmap[code // 8] & (1 << (code % 8)):
                down.add(name)
        return down
    finally:
        disp.close()
