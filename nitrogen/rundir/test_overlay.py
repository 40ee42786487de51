"""Tests of nitrogen.rundir.overlay: the debug frame keeps the game picture and adds the pad panel."""

from __future__ import annotations

import numpy as np
import pytest

from nitrogen.gamepad import GamepadState
from nitrogen.rundir.overlay import OVERLAY_MIN_HEIGHT, debug_frame, debug_layout


def _state(i: int) -> GamepadState:
    x = float(np.sin(i / 3.0))
    return GamepadState(
        buttons=frozenset({"SOUTH"}) if i % 2 else frozenset(),
        left_stick=(x, -x),
        right_stick=(0.0, x),
        left_trigger=float(i % 3 == 0),
    )


def _dot_centroid(img: np.ndarray) -> np.ndarray:
    """Mean (x, y) of the pixels painted in the stick-dot colour."""
    mask = np.abs(img.astype(int) - np.array([64, 224, 255])).sum(axis=2) < 30
    ys, xs = np.nonzero(mask)
    assert xs.size > 0
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("shape", [(210, 160), (96, 96), (720, 1280)])
def test_overlay_shape_and_type(shape: tuple[int, int]) -> None:
    frame = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    before = frame.copy()
    out = debug_frame(frame, _state(1), text="step 12.3 | 55 fps | 120 ms")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] >= OVERLAY_MIN_HEIGHT
    # The game picture is one part of the debug frame; the panel area adds to it.
    x, y, pw, ph = debug_layout(shape[1], shape[0]).picture
    assert (x, y) == (0, 0) and out.shape[0] >= ph and out.shape[1] >= pw
    if shape[0] < OVERLAY_MIN_HEIGHT:
        k = ph // shape[0]
        assert (ph, pw) == (shape[0] * k, shape[1] * k)  # integer upscale keeps the aspect
    else:
        assert (ph, pw) == shape
    np.testing.assert_array_equal(frame, before)  # the input is not modified


@pytest.mark.parametrize(
    ("shape", "beside"),
    [((210, 160), True), ((96, 96), True), ((720, 1280), False), ((211, 161), True), ((721, 1281), False)],
)
def test_the_game_picture_is_copied_unchanged_and_nothing_is_drawn_on_it(shape: tuple[int, int], beside: bool) -> None:
    h, w = shape
    frame = np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)
    layout = debug_layout(w, h)
    k = layout.scale
    upscaled = np.repeat(np.repeat(frame, k, axis=0), k, axis=1)  # nearest-neighbour, by hand
    busy = GamepadState(buttons=frozenset({"SOUTH", "LEFT_THUMB"}), left_stick=(1.0, 1.0), left_trigger=1.0)
    for state in (GamepadState(), _state(1), busy):
        out = debug_frame(frame, state, text="step 12.3 | 55 fps | 120 ms | stale")
        np.testing.assert_array_equal(out[: h * k, : w * k], upscaled)
        assert out.shape[1] % 2 == 0 and out.shape[0] % 2 == 0  # libx264 / yuv420p needs even sides
        assert (out.shape[1], out.shape[0]) == layout.size
    # Portrait and square pictures get a side column, landscape ones a strip below.
    assert layout.beside is beside
    if beside:
        assert out.shape[0] == h * k + (h * k) % 2 and out.shape[1] > w * k
    else:
        assert out.shape[1] == w * k + (w * k) % 2 and out.shape[0] > h * k
    # The panel and the text area lie outside the picture.
    for bx, by, bw, bh in (layout.panel, layout.text):
        assert bw > 0 and bh > 0
        assert bx >= w * k or by >= h * k
        assert bx + bw <= layout.size[0] and by + bh <= layout.size[1]


def test_pressed_buttons_light_the_panel_outside_the_picture() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    idle = debug_frame(frame, GamepadState())
    pressed = debug_frame(frame, GamepadState(buttons=frozenset({"SOUTH", "DPAD_UP"}), left_trigger=1.0))
    changed = np.abs(pressed.astype(int) - idle).sum(axis=2) > 0
    x, y, pw, ph = debug_layout(160, 210).panel
    assert changed.sum() > 100
    assert changed[y : y + ph, x : x + pw].sum() == changed.sum()  # every change is inside the panel


def test_long_status_text_wraps_inside_its_area() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    layout = debug_layout(160, 210)
    plain = debug_frame(frame, GamepadState())
    text = debug_frame(frame, GamepadState(), text="step 1234.5 | 60 fps | 118 ms | stale | a long note")
    changed = np.abs(text.astype(int) - plain).sum(axis=2) > 0
    x, y, tw, th = layout.text
    assert changed.sum() > 100 and changed[y : y + th, x : x + tw].sum() == changed.sum()
    # Too wide for one line of the side column: broken into several lines (runs of inked rows).
    inked = changed.any(axis=1).astype(int)
    lines = int((np.diff(inked) == 1).sum() + inked[0])
    assert lines >= 2


def test_overlay_lights_pressed_buttons() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    idle = debug_frame(frame, GamepadState())
    south = debug_frame(frame, GamepadState(buttons=frozenset({"SOUTH"})))
    east = debug_frame(frame, GamepadState(buttons=frozenset({"EAST"})))
    d_south = np.abs(south.astype(int) - idle).sum(axis=2) > 60
    d_east = np.abs(east.astype(int) - idle).sum(axis=2) > 60
    assert d_south.sum() > 50 and d_east.sum() > 50
    assert not (d_south & d_east).any()  # different buttons light different regions
    # SOUTH sits below EAST in the face-button diamond.
    assert np.nonzero(d_south)[0].mean() > np.nonzero(d_east)[0].mean()


def test_overlay_stick_dot_follows_the_stick() -> None:
    frame = np.zeros((96, 96, 3), np.uint8)
    cents = {x: _dot_centroid(debug_frame(frame, GamepadState(left_stick=(x, 0.0)))) for x in (-1.0, 0.0, 1.0)}
    assert cents[-1.0][0] < cents[0.0][0] < cents[1.0][0]
    assert cents[-1.0][1] == pytest.approx(cents[1.0][1], abs=0.5)
    down = _dot_centroid(debug_frame(frame, GamepadState(left_stick=(0.0, 1.0))))
    up = _dot_centroid(debug_frame(frame, GamepadState(left_stick=(0.0, 1.0)), invert_y=True))
    assert down[1] > cents[0.0][1] > up[1]


def test_overlay_trigger_bar_fills_with_value() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    lit = [
        (np.abs(debug_frame(frame, GamepadState(left_trigger=v)).astype(int) - [255, 196, 0]).sum(axis=2) < 30).sum()
        for v in (0.0, 0.5, 1.0)
    ]
    assert lit[0] < lit[1] < lit[2]


def test_overlay_text_changes_pixels() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    assert (debug_frame(frame, GamepadState(), text="step 1.0") != debug_frame(frame, GamepadState())).any()
