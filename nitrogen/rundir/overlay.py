"""The debug frame of a run: the game picture with the gamepad panel and a status text beside it.

:func:`debug_frame` never draws on the game picture: the picture (upscaled when small) is copied
unchanged into a larger frame, and the pad panel (sticks, triggers, buttons) and the status text
go into a separate dark area **beside** it for portrait or square pictures (a 160x210 Atari frame
becomes a 630 px tall column with a side bar) and **below** it for landscape pictures (a 1280x720
desktop frame gets a strip underneath). :func:`debug_layout` says where each part lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..gamepad import GamepadState
from .video import check_frame, even_size

__all__ = ["OVERLAY_MIN_HEIGHT", "OVERLAY_MIN_WIDTH", "DebugLayout", "debug_frame", "debug_layout"]

OVERLAY_MIN_HEIGHT = 480
"""Pictures shorter than this are upscaled (by an integer factor) in the debug frame."""
OVERLAY_MIN_WIDTH = 320
"""... and so are pictures narrower than this, so that small frames stay readable."""

_PANEL_W, _PANEL_H = 300, 150  # panel size at scale 1 (a 480 px tall, >= 320 px wide picture)
_AREA = (40, 40, 40)  # the area beside / below the picture
_BG = (0, 0, 0)  # the pad panel
_OUTLINE = (170, 170, 170)
_LIT = (255, 196, 0)
_DOT = (64, 224, 255)
_TEXT = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SEPARATOR = " | "

Box = tuple[int, int, int, int]
"""``(x, y, width, height)`` in pixels of the debug frame."""

# Button boxes in panel units: name -> (x0, y0, x1, y1, label).
_BOXES: dict[str, tuple[int, int, int, int, str]] = {
    "LEFT_SHOULDER": (10, 26, 80, 40, "LB"),
    "RIGHT_SHOULDER": (220, 26, 290, 40, "RB"),
    "BACK": (104, 14, 138, 30, "BK"),
    "START": (162, 14, 196, 30, "ST"),
    "DPAD_UP": (89, 89, 101, 101, ""),
    "DPAD_DOWN": (89, 113, 101, 125, ""),
    "DPAD_LEFT": (77, 101, 89, 113, ""),
    "DPAD_RIGHT": (101, 101, 113, 113, ""),
}
# Round buttons: name -> (cx, cy, r, label).
_ROUND: dict[str, tuple[int, int, int, str]] = {
    "GUIDE": (150, 22, 9, "G"),
    "NORTH": (255, 60, 10, "N"),
    "SOUTH": (255, 100, 10, "S"),
    "WEST": (235, 80, 10, "W"),
    "EAST": (275, 80, 10, "E"),
}
_STICKS = {"left": (45, 80, 28, "LEFT_THUMB"), "right": (185, 112, 28, "RIGHT_THUMB")}
_TRIGGER_BARS = {"left": (10, 8, 80, 22, "LT"), "right": (220, 8, 290, 22, "RT")}


@dataclass(frozen=True)
class DebugLayout:
    """Where the parts of the debug frame of a ``width`` x ``height`` picture lie."""

    scale: int
    """The integer upscale factor of the picture (1 for pictures of at least 320x480)."""
    picture: Box
    """The upscaled game picture, at the top-left corner ``(0, 0)``."""
    panel: Box
    """The pad panel."""
    text: Box
    """The area of the status text."""
    size: tuple[int, int]
    """``(width, height)`` of the whole debug frame; both even, as libx264's ``yuv420p`` needs."""
    beside: bool
    """``True``: the panel and text are in a column right of the picture; ``False``: in a strip below."""
    unit: float
    """The panel's scale (1.0 = 300x150 px)."""


def debug_layout(width: int, height: int) -> DebugLayout:
    """The layout of the debug frame of a ``width`` x ``height`` picture.

    The picture is upscaled by the smallest integer factor that makes it at least
    :data:`OVERLAY_MIN_HEIGHT` (480) px tall and :data:`OVERLAY_MIN_WIDTH` (320) px wide
    (a 160x210 Atari frame becomes 480x630, a 96x96 frame 480x480). A portrait or square picture
    gets a side column (status text at the top, panel at the bottom) of the panel's width plus
    margins; a landscape one a strip below, panel left and text right. The frame is then grown by
    one pixel of area where needed to make both sides even.
    """
    if width < 2 or height < 2:
        raise ValueError(f"frame must be at least 2x2 pixels, got {width}x{height}")
    k = max(1, math.ceil(OVERLAY_MIN_HEIGHT / height), math.ceil(OVERLAY_MIN_WIDTH / width))
    pw, ph = width * k, height * k
    u = min(ph / OVERLAY_MIN_HEIGHT, pw / OVERLAY_MIN_WIDTH)
    margin = round(8 * u)
    panel_w, panel_h = round(_PANEL_W * u), round(_PANEL_H * u)
    beside = pw <= ph
    if beside:
        size = even_size(pw + panel_w + 2 * margin, ph)
        panel = (pw + margin, size[1] - margin - panel_h, panel_w, panel_h)
        text = (pw + margin, margin, panel_w, panel[1] - 2 * margin)
    else:
        size = even_size(pw, ph + panel_h + 2 * margin)
        panel = (margin, ph + margin, panel_w, panel_h)
        text = (2 * margin + panel_w, ph + margin, size[0] - panel_w - 3 * margin, panel_h)
    return DebugLayout(k, (0, 0, pw, ph), panel, text, size, beside, u)


def debug_frame(
    frame: np.ndarray, state: GamepadState, *, text: str | None = None, invert_y: bool = False
) -> np.ndarray:
    """The debug frame of the RGB ``uint8`` ``frame``: the picture, the pad ``state`` and ``text``.

    The picture is copied, upscaled with nearest-neighbour sampling so pixel art stays crisp, to
    :attr:`DebugLayout.picture` and left untouched; the rest is laid out by :func:`debug_layout`,
    so the result is larger than the input. ``frame`` is not modified.

    The panel is laid out like a pad: trigger bars (LT, RT) filled by trigger value, shoulder boxes
    (LB, RB), BACK / GUIDE / START, a d-pad, the face buttons (N, S, W, E for NORTH, SOUTH, WEST,
    EAST), and two stick circles with a dot at the stick position (the circle fills when the stick
    is clicked). Pressed buttons are lit. Stick ``+y`` is drawn pointing down the image;
    ``invert_y=True`` draws ``+y`` up. ``text`` is an optional status line (e.g.
    ``"step 12.3 | 55 fps | 120 ms"``); where it does not fit on one line it is broken at its
    ``" | "`` separators (and at spaces), and ``"\\n"`` starts a new line.
    """
    arr = check_frame(frame)
    h, w = arr.shape[:2]
    layout = debug_layout(w, h)
    out = np.empty((layout.size[1], layout.size[0], 3), np.uint8)
    out[:] = _AREA
    _, _, pw, ph = layout.picture
    out[:ph, :pw] = arr if layout.scale == 1 else cv2.resize(arr, (pw, ph), interpolation=cv2.INTER_NEAREST)
    _draw_panel(out, layout, state, invert_y)
    if text:
        _draw_text(out, layout, text)
    return out


def _label(img: np.ndarray, text: str, center: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    if not text:
        return
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    org = (int(center[0] - tw / 2), int(center[1] + th / 2))
    cv2.putText(img, text, org, _FONT, scale, color, 1, cv2.LINE_AA)


def _draw_panel(img: np.ndarray, layout: DebugLayout, state: GamepadState, invert_y: bool) -> None:
    """Draw the pad panel into ``layout.panel`` of ``img`` (panel units scaled by ``layout.unit``)."""
    u = layout.unit
    ox, oy, panel_w, panel_h = layout.panel
    thick = max(1, round(u))
    small = 0.35 * u

    def p(x: float, y: float) -> tuple[int, int]:
        return round(ox + x * u), round(oy + y * u)

    def r(v: float) -> int:
        return max(1, round(v * u))

    img[oy : oy + panel_h, ox : ox + panel_w] = _BG

    # Triggers: bars filled left to right by the trigger value.
    for side, (bx0, by0, bx1, by1, name) in _TRIGGER_BARS.items():
        value = state.left_trigger if side == "left" else state.right_trigger
        if value > 0:
            cv2.rectangle(img, p(bx0, by0), p(bx0 + (bx1 - bx0) * value, by1), _LIT, -1)
        cv2.rectangle(img, p(bx0, by0), p(bx1, by1), _OUTLINE, thick)
        _label(img, name, p((bx0 + bx1) / 2, (by0 + by1) / 2), small, _TEXT)

    # Rectangular buttons.
    for name, (bx0, by0, bx1, by1, lab) in _BOXES.items():
        if state.pressed(name):
            cv2.rectangle(img, p(bx0, by0), p(bx1, by1), _LIT, -1)
        cv2.rectangle(img, p(bx0, by0), p(bx1, by1), _OUTLINE, thick)
        _label(img, lab, p((bx0 + bx1) / 2, (by0 + by1) / 2), small, _BG if state.pressed(name) else _TEXT)

    # Round buttons.
    for name, (cx, cy, rad, lab) in _ROUND.items():
        if state.pressed(name):
            cv2.circle(img, p(cx, cy), r(rad), _LIT, -1, cv2.LINE_AA)
        cv2.circle(img, p(cx, cy), r(rad), _OUTLINE, thick, cv2.LINE_AA)
        _label(img, lab, p(cx, cy), small, _BG if state.pressed(name) else _TEXT)

    # Sticks: a ring, a centre cross, and a dot at the position.
    for side, (cx, cy, rad, click) in _STICKS.items():
        sx, sy = state.left_stick if side == "left" else state.right_stick
        if invert_y:
            sy = -sy
        if state.pressed(click):
            cv2.circle(img, p(cx, cy), r(rad), _LIT, -1, cv2.LINE_AA)
        cv2.circle(img, p(cx, cy), r(rad), _OUTLINE, thick, cv2.LINE_AA)
        cv2.line(img, p(cx - 4, cy), p(cx + 4, cy), _OUTLINE, 1, cv2.LINE_AA)
        cv2.line(img, p(cx, cy - 4), p(cx, cy + 4), _OUTLINE, 1, cv2.LINE_AA)
        cv2.circle(img, p(cx + sx * rad, cy + sy * rad), r(6), _DOT, -1, cv2.LINE_AA)
        _label(img, "L" if side == "left" else "R", p(cx - rad + 4, cy - rad + 4), small, _TEXT)


def _wrap(text: str, max_width: int, scale: float, thick: int) -> list[str]:
    """Break ``text`` into lines no wider than ``max_width`` px: at newlines, then greedily at
    ``" | "`` separators, then at spaces (a single word wider than the area stays whole)."""

    def fits(line: str) -> bool:
        return cv2.getTextSize(line, _FONT, scale, thick)[0][0] <= max_width

    def pack(parts: list[str], sep: str) -> list[str]:
        lines: list[str] = []
        for part in parts:
            if lines and fits(lines[-1] + sep + part):
                lines[-1] += sep + part
            elif fits(part) or sep == " ":
                lines.append(part)
            else:
                lines.extend(pack(part.split(" "), " "))
        return lines

    return [line for para in text.split("\n") for line in (pack(para.split(_SEPARATOR), _SEPARATOR) or [""])]


def _draw_text(img: np.ndarray, layout: DebugLayout, text: str) -> None:
    """Write ``text`` into ``layout.text``, top-left aligned; lines that do not fit are left out."""
    x0, y0, tw, th = layout.text
    scale, thick = 0.55 * layout.unit, max(1, round(layout.unit))
    (_, line_h), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    step = line_h + base + max(2, round(4 * layout.unit))
    y = y0 + line_h
    for line in _wrap(text, tw, scale, thick):
        if y + base > y0 + th:
            break
        cv2.putText(img, line, (x0, y), _FONT, scale, _TEXT, thick, cv2.LINE_AA)
        y += step
