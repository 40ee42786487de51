"""The button order of a checkpoint: named, permuted in one place, and carried by the spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nitrogen.actions import BUTTON_ORDERS, BUTTONS
from nitrogen.gamepad import reorder_buttons
from nitrogen.policy import PolicySpec


def test_both_orders_name_the_21_buttons_and_alphabetical_is_the_layout():
    assert BUTTON_ORDERS["alphabetical"] == BUTTONS
    grouped = BUTTON_ORDERS["grouped"]
    assert sorted(grouped) == sorted(BUTTONS) and len(grouped) == 21
    assert grouped[:4] == ("DPAD_UP", "DPAD_DOWN", "DPAD_LEFT", "DPAD_RIGHT") and grouped[-1] == "GUIDE"


def test_reorder_is_a_permutation_of_the_button_dims_only_numpy_and_torch():
    layout = np.arange(50, dtype=np.float32).reshape(2, 25)
    model = reorder_buttons(layout, "grouped", to="model")
    for i, name in enumerate(BUTTON_ORDERS["grouped"]):  # model dim i holds that button
        assert model[0, i] == layout[0, BUTTONS.index(name)]
    np.testing.assert_array_equal(model[:, 21:], layout[:, 21:])
    np.testing.assert_array_equal(reorder_buttons(model, "grouped", to="layout"), layout)
    as_torch = reorder_buttons(torch.from_numpy(layout), "grouped", to="model")
    np.testing.assert_array_equal(as_torch.numpy(), model)
    assert reorder_buttons(layout, "alphabetical", to="layout") is layout
    with pytest.raises(ValueError, match="unknown button order"):
        reorder_buttons(layout, "zigzag", to="layout")


def test_the_spec_names_the_order_and_refuses_unknown_ones():
    assert PolicySpec().button_order == "alphabetical"
    info = {"action_horizon": 18, "button_order": "grouped"}
    assert PolicySpec.from_info(info).button_order == "grouped"
    with pytest.raises(ValueError, match="unknown button order"):
        PolicySpec(button_order="zigzag")


def test_a_session_decodes_the_model_dims_in_its_order(tiny_ckpt):
    from nitrogen import InferenceSession

    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    noise = np.random.default_rng(1).standard_normal((18, 25)).astype(np.float32)
    plain = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu")
    grouped = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", button_order="grouped")
    assert plain.spec.button_order == "alphabetical" and grouped.spec.button_order == "grouped"
    raw = plain.predict(frame, noise=noise).action_tensor  # the model's dims as they come (identity order)
    chunk = grouped.predict(frame, noise=noise)
    np.testing.assert_allclose(chunk.action_tensor, reorder_buttons(raw, "grouped", to="layout"), atol=1e-6)
    # Model dim 0 is DPAD_UP under the grouped order.
    np.testing.assert_allclose(chunk.action_tensor[:, BUTTONS.index("DPAD_UP")], raw[:, 0], atol=1e-6)


def test_training_targets_follow_the_checkpoint_order():
    import datasets

    from nitrogen.data import BUTTON_COLUMNS, GameplayDataset
    from nitrogen.data.images import png_bytes

    rows = 6
    cols = {name: [i % 2 == 0 for i in range(rows)] if name == "start" else [False] * rows for name in BUTTON_COLUMNS}
    cols |= {"j_left": [[0.0, 0.0]] * rows, "j_right": [[0.0, 0.0]] * rows}
    cols["image"] = [{"bytes": png_bytes(np.zeros((8, 8, 3), np.uint8)), "path": None}] * rows
    data = datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image())
    kw = {"action_shift": 0, "action_horizon": 2, "image_size": 8}
    plain = GameplayDataset(data, **kw)
    grouped = GameplayDataset(data, button_order="grouped", **kw)
    a, b = plain[0]["actions"].numpy(), grouped[0]["actions"].numpy()
    np.testing.assert_array_equal(b, reorder_buttons(a, "grouped", to="model"))
    assert b[0, BUTTON_ORDERS["grouped"].index("START")] == 1.0 and a[0, BUTTONS.index("START")] == 1.0


def test_the_flag_refuses_an_unknown_order_by_name(tiny_ckpt):
    from typer.testing import CliRunner

    from nitrogen.cli import app

    result = CliRunner().invoke(app, ["serve", str(tiny_ckpt), "--port", "0", "--button-order", "zigzag"])
    assert result.exit_code == 1
    assert "unknown button order 'zigzag'" in result.output and "alphabetical, grouped" in result.output
