import numpy as np
import pytest
import torch

from nitrogen.actions import ACTION_DIM, BUTTON_INDEX, BUTTONS, VIRTUAL_BUTTONS, pack_actions, unpack_actions


def test_button_order_is_alphabetical_and_complete():
    assert list(BUTTONS) == sorted(BUTTONS)
    assert len(BUTTONS) == 21 and ACTION_DIM == 25
    assert VIRTUAL_BUTTONS <= set(BUTTONS)
    assert BUTTON_INDEX["SOUTH"] == BUTTONS.index("SOUTH")


def test_pack_matches_golden_training_targets(golden_dir, golden_cases):
    for case in golden_cases:
        z = np.load(golden_dir / case["vectors"])
        packed = np.stack(
            [pack_actions(z[f"train_buttons_{b}"], z[f"train_j_left_{b}"], z[f"train_j_right_{b}"]) for b in range(2)]
        )
        np.testing.assert_allclose(packed, z["train_packed_actions"], atol=1e-7)


def test_unpack_matches_golden_decoding(golden_dir, golden_cases):
    for case in golden_cases:
        z = np.load(golden_dir / case["vectors"])
        for i in range(case["predictions"]):
            j_left, j_right, buttons = unpack_actions(z[f"action_tensor_{i}"])
            np.testing.assert_allclose(j_left, z[f"j_left_{i}"], atol=1e-6)
            np.testing.assert_allclose(j_right, z[f"j_right_{i}"], atol=1e-6)
            np.testing.assert_array_equal(buttons, z[f"buttons_{i}"])


@pytest.mark.parametrize("as_torch", [False, True])
def test_round_trip(as_torch):
    rng = np.random.default_rng(0)
    buttons = (rng.random((18, 21)) > 0.5).astype(np.float32)
    j_left = rng.uniform(-1, 1, (18, 2)).astype(np.float32)
    j_right = rng.uniform(-1, 1, (18, 2)).astype(np.float32)
    args = [torch.from_numpy(a) for a in (buttons, j_left, j_right)] if as_torch else [buttons, j_left, j_right]
    packed = pack_actions(*args)
    assert tuple(packed.shape) == (18, 25)
    out = unpack_actions(packed)
    for got, want in zip(out, (j_left, j_right, buttons), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_unpack_clamps_sticks():
    action = np.full((1, 25), 0.5, dtype=np.float32)
    action[0, 21], action[0, 24] = 3.0, -2.0
    j_left, j_right, _ = unpack_actions(action)
    assert j_left[0, 0] == 1.0 and j_right[0, 1] == -1.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="21"):
        pack_actions(np.zeros((4, 20)), np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="does not match"):
        pack_actions(np.zeros((4, 21)), np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="25"):
        unpack_actions(np.zeros((4, 21)))
