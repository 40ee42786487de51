"""Numerical parity with the original implementation, on the golden checkpoints.

Every case loads through the same loader that users call on the released ``ng.pt``.
"""

import numpy as np
import pytest
import torch

from nitrogen import InferenceSession, convert_checkpoint, load_model
from nitrogen.inference.preprocessing import preprocess

CASES = ["released_layout", "game_padded", "two_frames_cfg_sinusoidal"]


def _case(golden_cases, name):
    return next(c for c in golden_cases if c["name"] == name)


def _check_predictions(session, case, z):
    for i in range(case["predictions"]):
        chunk = session.predict(z[f"image_{i}"], noise=z[f"noise_{i}"])
        want = z[f"action_tensor_{i}"]
        assert chunk.action_tensor.dtype == np.float32
        assert np.abs(chunk.action_tensor - want).max() <= 1e-4, f"call {i}"
        np.testing.assert_allclose(chunk.j_left, z[f"j_left_{i}"], atol=2e-4)
        np.testing.assert_allclose(chunk.j_right, z[f"j_right_{i}"], atol=2e-4)
        decisive = np.abs(want[:, :21] - 0.5) > 1e-3
        np.testing.assert_array_equal(chunk.buttons[decisive], z[f"buttons_{i}"][decisive])


@pytest.mark.parametrize("name", CASES)
def test_sampled_actions_match_golden(golden_dir, golden_cases, name):
    case = _case(golden_cases, name)
    z = np.load(golden_dir / case["vectors"])
    session = InferenceSession.from_checkpoint(
        golden_dir / case["checkpoint"],
        device="cpu",
        game=case["game"],
        cfg_scale=case["cfg_scale"],
        context_length=case["context_frames"],
    )
    assert session.num_steps == session.config.model_cfg.num_inference_timesteps
    _check_predictions(session, case, z)


@pytest.mark.parametrize("name", CASES)
def test_training_loss_matches_golden(golden_dir, golden_cases, name):
    case = _case(golden_cases, name)
    z = np.load(golden_dir / case["vectors"])
    model, raw = load_model(golden_dir / case["checkpoint"])
    game = raw.game_mapping[case["game"]] if case["game"] else None
    with torch.no_grad():
        feats = model.encode_frames(torch.cat([preprocess(z[f"train_image_{b}"], 256) for b in range(2)]))
        # Each sample's frame fills every context slot; no slot is dropped.
        frames = [feats[b][None].expand(case["context_frames"], -1, -1) for b in range(2)]
        cond = model.condition(model.vl_tokens(frames, [game, game]))
        loss = model.flow_matching_loss(
            cond,
            torch.from_numpy(z["train_packed_actions"]),
            noise=torch.from_numpy(z["train_noise"]),
            t=torch.from_numpy(z["train_t"]),
        )
    want = float(z["train_loss"])
    assert abs(loss.item() - want) / want <= 1e-5


def test_safetensors_copy_reproduces_golden(golden_dir, golden_cases, tmp_path):
    case = _case(golden_cases, "game_padded")
    z = np.load(golden_dir / case["vectors"])
    st = convert_checkpoint(golden_dir / case["checkpoint"], tmp_path / "game.safetensors")
    session = InferenceSession.from_checkpoint(st, device="cpu", game="beta")
    assert session.list_games() == {"": 0, "alpha": 1, "beta": 2}
    _check_predictions(session, case, z)
