import cv2
import numpy as np
import pytest
from PIL import Image

from nitrogen import BUTTONS, ActionChunk, InferenceSession, Policy


@pytest.fixture(scope="module")
def frames(golden_dir):
    z = np.load(golden_dir / "two_frames_cfg_sinusoidal.npz")
    return z["image_0"], z["image_1"]


@pytest.fixture()
def session(tiny_ckpt):
    return InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=0)


def _noise(seed, H=18):
    return np.random.default_rng(seed).standard_normal((H, 25)).astype(np.float32)


def test_session_is_a_policy_and_returns_a_chunk(session, frames):
    assert isinstance(session, Policy)
    chunk = session.predict(frames[0])
    assert isinstance(chunk, ActionChunk)
    assert chunk["j_left"].shape == (18, 2) and chunk["j_right"].shape == (18, 2)
    assert chunk["buttons"].shape == (18, len(BUTTONS)) and chunk["action_tensor"].shape == (18, 25)
    assert set(np.unique(chunk.buttons)) <= {0.0, 1.0}
    assert np.abs(chunk.j_left).max() <= 1.0
    assert chunk.timing_ms["total_ms"] > 0
    assert dict(chunk).keys() == {"j_left", "j_right", "buttons", "action_tensor"}


def test_any_size_frame_is_squashed_with_inter_area(tiny_ckpt, frames):
    big = cv2.resize(frames[0], (640, 360), interpolation=cv2.INTER_CUBIC)
    noise = _noise(1)
    a = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu").predict(big, noise=noise)
    squashed = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
    b = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu").predict(squashed, noise=noise)
    np.testing.assert_array_equal(a.action_tensor, b.action_tensor)
    c = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu").predict(Image.fromarray(big), noise=noise)
    np.testing.assert_array_equal(a.action_tensor, c.action_tensor)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((64, 64, 3), dtype=np.float32), "dtype uint8"),
        (np.full((64, 64, 3), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((64, 64), dtype=np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((64, 64, 4), dtype=np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((0, 64, 3), dtype=np.uint8), "empty"),
        ("frame.png", "numpy array or a PIL image"),
        (np.zeros((9000, 4, 3), dtype=np.uint8), "limit"),
    ],
)
def test_bad_frames_raise_value_error(session, frame, message):
    with pytest.raises(ValueError, match=message):
        session.predict(frame)
    assert session.info()["frames_in_history"] == 0


def test_bad_noise_raises(session, frames):
    with pytest.raises(ValueError, match=r"noise must have shape \(18, 25\)"):
        session.predict(frames[0], noise=np.zeros((16, 25), np.float32))
    with pytest.raises(ValueError, match="finite"):
        session.predict(frames[0], noise=np.full((18, 25), np.inf, np.float32))


def test_reset_clears_history(golden_dir, frames):
    path = golden_dir / "two_frames_cfg_sinusoidal.pt"
    s = InferenceSession.from_checkpoint(path, device="cpu", cfg_scale=2.0)
    noise = _noise(2, H=16)
    s.predict(frames[0], noise=noise)
    with_history = s.predict(frames[1], noise=noise)
    s.reset()
    assert s.info()["frames_in_history"] == 0
    after_reset = s.predict(frames[1], noise=noise)
    fresh = InferenceSession.from_checkpoint(path, device="cpu", cfg_scale=2.0).predict(frames[1], noise=noise)
    np.testing.assert_array_equal(after_reset.action_tensor, fresh.action_tensor)
    assert not np.allclose(with_history.action_tensor, after_reset.action_tensor)


def test_seed_makes_sampling_reproducible(tiny_ckpt, frames):
    runs = [InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=7).predict(frames[0]) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].action_tensor, runs[1].action_tensor)
    other = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", seed=8).predict(frames[0])
    assert not np.allclose(runs[0].action_tensor, other.action_tensor)


def test_num_steps_override(tiny_ckpt, frames):
    s = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", num_steps=2)
    assert s.info()["num_steps"] == 2
    noise = _noise(3)
    two = s.predict(frames[0], noise=noise)
    four = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu").predict(frames[0], noise=noise)
    assert not np.allclose(two.action_tensor, four.action_tensor)
    for bad in (0, 5000):
        with pytest.raises(ValueError, match="num_steps"):
            InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", num_steps=bad)


def test_games_by_name_or_id(golden_dir, tiny_ckpt, frames):
    path = golden_dir / "game_padded.pt"
    by_name = InferenceSession.from_checkpoint(path, device="cpu", game="beta")
    by_id = InferenceSession.from_checkpoint(path, device="cpu", game=2)
    by_text_id = InferenceSession.from_checkpoint(path, device="cpu", game="2")
    assert by_name.list_games() == {"": 0, "alpha": 1, "beta": 2}
    assert by_name.game_id == by_id.game_id == by_text_id.game_id == 2
    noise = _noise(4)
    np.testing.assert_array_equal(
        by_name.predict(frames[0], noise=noise).action_tensor, by_id.predict(frames[0], noise=noise).action_tensor
    )
    with pytest.raises(ValueError, match="unknown game 'gamma'.*alpha"):
        InferenceSession.from_checkpoint(path, device="cpu", game="gamma")
    with pytest.raises(ValueError, match="no game mapping"):
        InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", game="beta")


def test_cfg_keeps_the_game_in_the_conditional_branch(golden_dir, frames):
    # The original drops the game from both branches under CFG; here the conditional branch keeps it,
    # so the chosen game still changes the guided prediction.
    path = golden_dir / "game_padded.pt"
    noise = _noise(5)
    alpha = InferenceSession.from_checkpoint(path, device="cpu", game="alpha", cfg_scale=2.0).predict(
        frames[0], noise=noise
    )
    beta = InferenceSession.from_checkpoint(path, device="cpu", game="beta", cfg_scale=2.0).predict(
        frames[0], noise=noise
    )
    assert not np.allclose(alpha.action_tensor, beta.action_tensor)


def test_context_longer_than_the_checkpoint_allows(tiny_ckpt):
    with pytest.raises(ValueError, match="context_length=2 needs 32 VL tokens"):
        InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", context_length=2)
    with pytest.raises(ValueError, match="at least 1 frame"):
        InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", context_length=0)


def test_bfloat16_on_cpu_is_close_to_float32(tiny_ckpt, frames):
    noise = _noise(6)
    fp32 = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu").predict(frames[0], noise=noise)
    bf16 = InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", dtype="bfloat16")
    assert bf16.precision == "bfloat16 weights"
    out = bf16.predict(frames[0], noise=noise)
    assert out.action_tensor.dtype == np.float32
    assert np.abs(out.action_tensor - fp32.action_tensor).max() < 0.1


def test_bad_settings(tiny_ckpt):
    with pytest.raises(ValueError, match="unsupported dtype"):
        InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="cfg_scale"):
        InferenceSession.from_checkpoint(tiny_ckpt, device="cpu", cfg_scale=float("nan"))


def test_info_describes_the_session(session, frames):
    session.predict(frames[0])
    info = session.info()
    assert info["device"] == "cpu" and info["precision"] == "float32 weights"
    assert info["buttons"] == list(BUTTONS)
    assert info["action_horizon"] == 18 and info["num_steps"] == 4 and info["context_length"] == 1
    assert info["num_predictions"] == 1 and info["frames_in_history"] == 1
    assert info["games"] == {} and info["game"] is None
    assert [row["name"] for row in info["action_layout"][:21]] == list(BUTTONS)


def test_spec_describes_the_checkpoint(golden_dir):
    from nitrogen.policy import PolicySpec

    session = InferenceSession.from_checkpoint(golden_dir / "game_padded.pt", device="cpu", game="beta")
    assert session.spec == PolicySpec(
        name="game_padded",
        action_horizon=18,
        action_shift=1,
        image_size=256,
        step_rate_hz=60.0,
        game_mapping={"": 0, "alpha": 1, "beta": 2},
        supports_rtc=True,
    )
    assert session.spec is session.spec


def test_close_is_idempotent_and_stops_predictions(session, frames):
    session.predict(frames[0])
    session.close()
    session.close()
    assert session.closed and session.info()["frames_in_history"] == 0
    with pytest.raises(RuntimeError, match="InferenceSession is closed"):
        session.predict(frames[0])
    assert session.info()["num_predictions"] == 1


def test_settings_live_in_the_one_history(session, frames):
    session.cfg_scale = 2.0
    assert session.history.cfg_scale == 2.0
    with pytest.raises(ValueError, match="cfg_scale"):
        session.cfg_scale = float("nan")
    session.predict(frames[0])
    assert session.history.predictions == session.num_predictions == 1 and len(session.history) == 1
