"""PolicyEngine.predict_batch, the one inference path, and the frame size the checkpoint owns."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from nitrogen import InferenceSession
from nitrogen.inference.engine import MAX_NOISE_ABS, FrameRequest, PolicyEngine, checkpoint_name
from nitrogen.inference.history import MAX_CFG_SCALE, FrameHistory
from nitrogen.inference.preprocessing import to_pixels
from nitrogen.policy import PolicySpec


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return PolicyEngine.from_checkpoint(tiny_ckpt, device="cpu")


@pytest.fixture(scope="module")
def frames(golden_dir):
    z = np.load(golden_dir / "released_layout.npz")
    return z["image_0"], z["image_1"]


def _noise(seed, H=18):
    return np.random.default_rng(seed).standard_normal((H, 25)).astype(np.float32)


def test_a_batch_equals_each_request_alone(engine, frames):
    histories = [FrameHistory(1), FrameHistory(1)]
    result = engine.predict_batch([FrameRequest(h, f, _noise(k)) for k, (h, f) in enumerate(zip(histories, frames))])
    assert result.batch_size == 2 and result.failure is None and result.errors == [None, None]
    assert result.total_ms >= result.vision_ms > 0 and result.sample_ms > 0
    for k, frame in enumerate(frames):
        alone = InferenceSession(engine).predict(frame, noise=_noise(k))
        np.testing.assert_allclose(result.actions[k], alone.action_tensor, atol=1e-5)
        assert len(histories[k]) == 1 and histories[k].predictions == 1


def test_a_bad_request_fails_alone_and_leaves_its_history_untouched(engine, frames):
    good, bad, bad_noise = FrameHistory(1), FrameHistory(1), FrameHistory(1)
    result = engine.predict_batch(
        [
            FrameRequest(good, frames[0], _noise(0)),
            FrameRequest(bad, np.zeros((8, 8, 4), np.uint8)),
            FrameRequest(bad_noise, frames[1], np.zeros((3, 25), np.float32)),
        ]
    )
    assert result.batch_size == 1 and result.failure is None
    assert result.actions[0] is not None and result.actions[1] is None and result.actions[2] is None
    assert isinstance(result.errors[1], ValueError) and "(H, W, 3)" in str(result.errors[1])
    assert isinstance(result.errors[2], ValueError) and "noise must have shape" in str(result.errors[2])
    assert (len(good), good.predictions) == (1, 1)
    assert (len(bad), bad.predictions, len(bad_noise), bad_noise.predictions) == (0, 0, 0, 0)


def test_a_request_seed_overrides_the_history_generator(engine, frames):
    seeded = engine.predict_batch([FrameRequest(FrameHistory(1, seed=5), frames[0], seed=11)])
    same = engine.predict_batch([FrameRequest(FrameHistory(1), frames[0], seed=11)])
    history_seed = engine.predict_batch([FrameRequest(FrameHistory(1, seed=11), frames[0])])
    np.testing.assert_array_equal(seeded.actions[0], same.actions[0])
    np.testing.assert_array_equal(seeded.actions[0], history_seed.actions[0])


def test_a_failing_model_pass_fails_every_request_that_reached_it(tiny_ckpt, frames, monkeypatch):
    engine = PolicyEngine.from_checkpoint(tiny_ckpt, device="cpu")

    def broken(requests):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine, "sample", broken)
    histories = [FrameHistory(1), FrameHistory(1)]
    result = engine.predict_batch([FrameRequest(histories[0], frames[0]), FrameRequest(histories[1], "nope")])
    assert isinstance(result.failure, RuntimeError) and result.batch_size == 1
    assert result.errors[0] is result.failure and isinstance(result.errors[1], ValueError)
    assert result.actions == [None, None] and histories[0].predictions == 0


def test_a_history_appears_once_per_batch(engine, frames):
    history = FrameHistory(1)
    with pytest.raises(ValueError, match="once per batch"):
        engine.predict_batch([FrameRequest(history, frames[0]), FrameRequest(history, frames[1])])
    assert len(history) == 0


def test_frame_history_settings():
    history = FrameHistory(2, game_id=1, game_name="alpha", cfg_scale=2)
    assert (history.context_length, history.cfg_scale, history.generator) == (2, 2.0, None)
    for k in range(3):
        history.append(torch.full((1,), float(k)))
    assert len(history) == 2 and [t.item() for t in history.features] == [1.0, 2.0]
    history.clear()
    assert len(history) == 0 and history.game_name == "alpha"
    with pytest.raises(ValueError, match="cfg_scale"):
        history.cfg_scale = float("inf")
    with pytest.raises(ValueError, match="at least 1 frame"):
        FrameHistory(0)


def test_cfg_scale_and_noise_are_bounded(engine, frames):
    for scale in (MAX_CFG_SCALE, -MAX_CFG_SCALE, 0.0):
        assert FrameHistory(1, cfg_scale=scale).cfg_scale == scale
    for scale in (MAX_CFG_SCALE * 1.01, -1e308, float("nan")):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number from -100 to 100"):
            FrameHistory(1, cfg_scale=scale)
    with pytest.raises(ValueError, match="cfg_scale"):
        InferenceSession(engine, cfg_scale=1e308)
    history = FrameHistory(1)
    huge = np.full((18, 25), 3e38, np.float32)  # finite, but far past any draw of the sampler's noise
    result = engine.predict_batch([FrameRequest(history, frames[0], huge)])
    assert result.actions == [None] and "noise values must be within" in str(result.errors[0])
    assert len(history) == 0
    edge = np.full((18, 25), MAX_NOISE_ABS, np.float32)
    assert engine.predict_batch([FrameRequest(FrameHistory(1), frames[0], edge)]).errors[0] is None


class _UnboundedGuidance(FrameHistory):
    """A history whose CFG scale skips the bound, to drive the sampler past float32."""

    @property
    def cfg_scale(self) -> float:
        return 1e30

    @cfg_scale.setter
    def cfg_scale(self, value: float) -> None:
        pass


def test_non_finite_actions_are_an_error_never_a_result(golden_dir):
    engine = PolicyEngine.from_checkpoint(golden_dir / "two_frames_cfg_sinusoidal.pt", device="cpu")
    z = np.load(golden_dir / "two_frames_cfg_sinusoidal.npz")
    overflowing, fine = _UnboundedGuidance(2), FrameHistory(2, cfg_scale=2.0)
    for i in range(2):  # with two frames the guided branches differ, and a scale of 1e30 overflows
        result = engine.predict_batch(
            [
                FrameRequest(overflowing, z[f"image_{i}"], z["noise_1"]),
                FrameRequest(fine, z[f"image_{i}"], z["noise_1"]),
            ]
        )
    assert result.actions[0] is None and "not finite" in str(result.errors[0])
    assert result.errors[1] is None and np.isfinite(result.actions[1]).all()
    np.testing.assert_allclose(result.actions[1], z["action_tensor_1"], atol=1e-4)
    assert overflowing.predictions == 1 and fine.predictions == 2


def test_info_has_everything_a_policy_spec_reads(engine):
    info = engine.info()
    spec = PolicySpec.from_info(info)
    assert spec == PolicySpec(
        name="released_layout",
        action_horizon=18,
        action_shift=1,
        image_size=256,
        step_rate_hz=60.0,
        supports_rtc=True,
    )
    assert info["checkpoint"].endswith("released_layout.pt")


def test_checkpoint_names_are_readable(tiny_ckpt, tmp_path):
    assert checkpoint_name("/data/ckpts/ng.pt") == "ng"
    assert checkpoint_name("runs/gopher-ft/model.pt") == "gopher-ft/model.pt"
    assert checkpoint_name("runs/gopher-ft/model.safetensors") == "gopher-ft/model.safetensors"
    assert checkpoint_name(None, "my-experiment") == "my-experiment"
    copied = tmp_path / "gopher" / "model.pt"
    copied.parent.mkdir()
    shutil.copy(tiny_ckpt, copied)
    assert PolicyEngine.from_checkpoint(copied, device="cpu").info()["name"] == "gopher/model.pt"


def test_the_frame_reaching_the_tower_is_squashed_once_to_the_checkpoints_size(tiny_ckpt_224, monkeypatch):
    session = InferenceSession.from_checkpoint(tiny_ckpt_224, device="cpu", seed=0)
    assert session.engine.image_size == 224 and session.spec.image_size == 224
    seen: list[torch.Tensor] = []
    encode_frames = session.model.encode_frames

    def recording(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels.clone())
        return encode_frames(pixels)

    monkeypatch.setattr(session.model, "encode_frames", recording)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    chunk = session.predict(frame)
    assert chunk.action_tensor.shape == (session.spec.action_horizon, 25)
    [pixels] = seen
    assert pixels.shape == (1, 3, 224, 224)
    once = to_pixels(cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA)[None])
    torch.testing.assert_close(pixels, once, rtol=0, atol=0)
    at_256 = cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA)
    via_256 = cv2.resize(at_256, (224, 224), interpolation=cv2.INTER_AREA)
    assert not torch.equal(pixels, to_pixels(via_256[None]))


def test_a_prefix_comes_back_frozen_and_bad_prefixes_fail_alone(engine, frames):
    prefix = np.random.default_rng(3).random((12, 25)).astype(np.float32)
    result = engine.predict_batch(
        [
            FrameRequest(FrameHistory(1), frames[0], _noise(0), prefix=prefix, delay=4, chunking="rtc"),
            FrameRequest(FrameHistory(1), frames[1], _noise(1), prefix=prefix, delay=12, chunking="prefix"),
            FrameRequest(FrameHistory(1), frames[1], _noise(1)),
            FrameRequest(FrameHistory(1), frames[0], prefix=np.zeros((19, 25), np.float32)),
            FrameRequest(FrameHistory(1), frames[0], prefix=prefix, delay=13),
            FrameRequest(FrameHistory(1), frames[0], prefix=prefix * np.nan),
            FrameRequest(FrameHistory(1), frames[0], prefix=prefix, chunking="magic"),
            FrameRequest(FrameHistory(1), frames[0], prefix=prefix, beta=-1.0),
            FrameRequest(FrameHistory(1), frames[0], delay=2),
        ]
    )
    assert result.batch_size == 3
    np.testing.assert_array_equal(result.actions[0][:4], prefix[:4])
    np.testing.assert_array_equal(result.actions[1][:12], prefix)
    plain = InferenceSession(engine).predict(frames[1], noise=_noise(1)).action_tensor
    np.testing.assert_allclose(result.actions[2], plain, atol=1e-5)
    messages = [str(e) for e in result.errors[3:]]
    for message, expected in zip(
        messages, ["prefix must have shape", "delay must be", "finite", "chunking must be", "beta must be", "without"]
    ):
        assert expected in message


def test_a_session_and_a_batch_agree_on_rtc(engine, frames):
    prefix = np.random.default_rng(4).random((15, 25)).astype(np.float32)
    alone = InferenceSession(engine).predict(frames[0], noise=_noise(2), prefix=prefix, delay=3)
    batch = engine.predict_batch(
        [
            FrameRequest(FrameHistory(1), frames[1], _noise(5)),
            FrameRequest(FrameHistory(1), frames[0], _noise(2), prefix=prefix, delay=3),
        ]
    )
    np.testing.assert_allclose(batch.actions[1], alone.action_tensor, atol=1e-5)
    assert engine.info()["supports_rtc"] is True


def test_a_frozen_prefix_comes_back_in_the_layout_order_under_another_button_order(tiny_ckpt, frames):
    """The loop sends back what it played (layout order); a grouped-order model must not see it permuted."""
    grouped = PolicyEngine.from_checkpoint(tiny_ckpt, device="cpu", button_order="grouped")
    prefix = np.random.default_rng(7).random((18, 25)).astype(np.float32)
    result = grouped.predict_batch([FrameRequest(FrameHistory(1), frames[0], _noise(0), prefix=prefix, delay=18)])
    np.testing.assert_array_equal(result.actions[0], prefix)
