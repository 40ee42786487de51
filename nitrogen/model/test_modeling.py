import itertools
import json

import numpy as np
import pytest
import torch

from nitrogen.inference.preprocessing import preprocess
from nitrogen.model.checkpoint import build_model, load_model
from nitrogen.model.configuration import CheckpointConfig
from nitrogen.model.modeling import Conditioning


def test_full_size_model_has_the_released_state_dict(golden_dir):
    config = CheckpointConfig.model_validate(json.loads((golden_dir / "ng_ckpt_config.json").read_text()))
    model = build_model(config, device="meta")
    expected = json.loads((golden_dir / "ng_state_dict_shapes.json").read_text())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len(got) == 595
    assert sum(p.numel() for p in model.parameters()) == 493_631_513
    assert model.vision_spec.tokens_per_frame == 256


@pytest.fixture(scope="module")
def tiny(golden_dir):
    model, raw = load_model(golden_dir / "two_frames_cfg_sinusoidal.pt")
    z = np.load(golden_dir / "two_frames_cfg_sinusoidal.npz")
    with torch.no_grad():
        feats = model.encode_frames(torch.cat([preprocess(z["image_0"], 256), preprocess(z["image_1"], 256)]))
    return model, feats


def _reference_sample(model, vl, noise, num_steps):
    """The original's loop: mixer, keys/values and timestep embedding recomputed at every step."""
    x = noise
    for i in range(num_steps):
        bucket = torch.tensor([int(i / num_steps * model.config.model_cfg.num_timestep_buckets)])
        sched = model.model.schedule(bucket)
        v = model.velocity(x, model.condition(vl), bucket, sched.block_modulations, sched.out_modulation)
        x = x + v / num_steps
    return x


def test_cached_sampler_equals_per_step_recompute(tiny):
    model, feats = tiny
    noise = torch.randn(1, 16, 25, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vl = model.vl_tokens([feats], [None])
        fast = model.sample(model.condition(vl), noise, 7)
        slow = _reference_sample(model, vl, noise, 7)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.allclose(fast, noise, atol=1e-2)


def test_batched_cfg_equals_two_separate_branches(tiny):
    model, feats = tiny
    noise = torch.randn(1, 16, 25, generator=torch.Generator().manual_seed(2))
    s, n = 1.5, 5
    with torch.no_grad():
        cond = model.condition(model.vl_tokens([feats], [None]))
        uncond = model.condition(model.vl_tokens([feats[-1:]], [None]))
        batched = model.sample(cond, noise, n, uncond, s)
        sched = model.model.schedule(model.step_buckets(n))
        x = noise
        for i in range(n):
            b, mods, out = sched.step(i, 1)
            v_c = model.velocity(x, cond, b, mods, out)
            v_u = model.velocity(x, uncond, b, mods, out)
            x = x + (v_c + s * (v_c - v_u)) / n
    assert torch.allclose(batched, x, atol=1e-5)


def test_batch_of_samples_equals_one_at_a_time(tiny):
    model, feats = tiny
    noise = torch.randn(2, 16, 25, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c0 = model.condition(model.vl_tokens([feats], [None]))
        c1 = model.condition(model.vl_tokens([feats[-1:]], [None]))
        both = model.sample(Conditioning.cat([c0, c1]), noise, 3)
        one = [model.sample(c, noise[i : i + 1], 3) for i, c in enumerate((c0, c1))]
    assert torch.allclose(both, torch.cat(one), atol=1e-5)


def test_flow_time_sampling_range_and_training_gradients(tiny):
    model, feats = tiny
    t = model.sample_time(4096, torch.device("cpu"))
    assert float(t.min()) >= 0.0 and float(t.max()) <= 0.999
    # Beta(1.6, 0.8) has mean 2/3, so t = 1 - Beta has mean 1/3 (times 0.999).
    assert abs(float(t.mean()) - 0.999 / 3) < 0.02
    model.train()
    try:
        cond = model.condition(model.vl_tokens([feats.detach()], [None]))
        actions = torch.rand(1, 16, 25)
        mask = torch.ones_like(actions)
        mask[..., 21:] = 0
        loss = model.flow_matching_loss(cond, actions, action_mask=mask)
        loss.backward()
        grad = model.action_decoder.layer2.W.grad.clone()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert torch.isfinite(loss)
    # Masked-out stick dims (21..24) get no gradient in the decoder's last layer; the rest do.
    assert torch.count_nonzero(grad[..., 21:]) == 0
    assert torch.count_nonzero(grad[..., :21]) > 0


def test_vl_tokens_left_pad_and_reject_overflow(tiny):
    model, feats = tiny
    vl = model.vl_tokens([feats[-1:]], [None])
    S = model.config.tokenizer_cfg.max_sequence_length
    assert vl.shape == (1, S, feats.shape[-1])
    assert torch.count_nonzero(vl[0, : S - 16]) == 0
    assert torch.equal(vl[0, S - 16 :], feats[-1])
    with pytest.raises(ValueError, match="max_sequence_length"):
        model.vl_tokens([torch.cat([feats, feats, feats])], [None])


def test_training_loss_from_pixels_matches_the_golden_loss(golden_dir):
    z = np.load(golden_dir / "two_frames_cfg_sinusoidal.npz")
    model, _ = load_model(golden_dir / "two_frames_cfg_sinusoidal.pt")
    frames = torch.cat([preprocess(z[f"train_image_{b}"], 256) for b in range(2)])  # (2, 3, S, S)
    pixels = frames[:, None].expand(2, 2, 3, 256, 256)  # the frame fills both context slots
    with torch.no_grad():
        loss = model.training_loss(
            pixels,
            torch.ones(2, 2, dtype=torch.bool),
            torch.from_numpy(z["train_packed_actions"]),
            noise=torch.from_numpy(z["train_noise"]),
            t=torch.from_numpy(z["train_t"]),
        )
    assert abs(loss.item() - float(z["train_loss"])) / float(z["train_loss"]) <= 1e-5
    with pytest.raises(ValueError, match="at least one valid frame"):
        model.training_loss(pixels, torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 16, 25))


def test_gradient_checkpointing_recomputes_the_vision_layers_with_equal_gradients(golden_dir):
    model, _ = load_model(golden_dir / "released_layout.pt")
    model.train()
    for module in model.modules():  # no dropout, so both passes see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    layer = model.vision_encoder.encoder.layers[0]
    calls = []
    forward = layer.forward
    layer.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    pixels = torch.rand(1, 1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    args = (
        pixels,
        torch.ones(1, 1, dtype=torch.bool),
        torch.rand(1, 18, 25, generator=torch.Generator().manual_seed(1)),
    )
    noise, t = torch.randn(1, 18, 25, generator=torch.Generator().manual_seed(2)), torch.tensor([0.4])
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        calls.clear()
        model.training_loss(*args, noise=noise, t=t).backward()
        grads.append(model.vision_encoder.encoder.layers[0].mlp.fc1.weight.grad.clone())
        assert len(calls) == (2 if checkpointing else 1)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ------------------------------------------------------------------------------- real-time chunking


def _guide(rows, target, delay, guided, beta=5.0, length=None):
    from nitrogen.model.modeling import PrefixGuide

    R, H = len(rows), target.shape[1]
    return PrefixGuide(
        rows=torch.tensor(rows),
        target=target,
        length=torch.tensor([H] * R if length is None else length),
        delay=torch.tensor(delay),
        guided=torch.tensor(guided),
        beta=torch.tensor([beta] * R, dtype=torch.float32),
    )


@pytest.fixture(scope="module")
def rtc_setup(tiny):
    model, feats = tiny
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        c0 = model.condition(model.vl_tokens([feats], [None]))
        c1 = model.condition(model.vl_tokens([feats[-1:]], [None]))
    noise = torch.randn(2, 16, 25, generator=g)
    prefix = torch.rand(1, 16, 25, generator=g)
    return model, Conditioning.cat([c0, c1]), noise, prefix


def test_soft_mask_follows_the_paper():
    from nitrogen.model.modeling import rtc_soft_mask

    W = rtc_soft_mask(torch.tensor([3, 0]), torch.tensor([10, 4]), 12)
    assert torch.equal(W[0, :3], torch.ones(3)) and torch.equal(W[0, 10:], torch.zeros(2))
    soft = W[0, 3:10]
    assert bool((soft[1:] < soft[:-1]).all()) and 0 < float(soft.min()) and float(soft.max()) < 1
    c = (10 - 3) / (10 - 3 + 1)  # c_d = (k - d) / (k - d + 1)
    assert abs(float(W[0, 3]) - c * (np.exp(c) - 1) / (np.e - 1)) < 1e-6
    assert torch.equal(W[1, 4:], torch.zeros(8)) and float(W[1, 0]) < 1


@pytest.mark.parametrize("guided", [False, True])
def test_a_delay_of_the_whole_horizon_returns_the_prefix_exactly(rtc_setup, guided):
    model, cond, noise, prefix = rtc_setup
    with torch.no_grad():
        out = model.sample(cond, noise, 4, prefix=_guide([1], prefix, [16], [guided]))
    assert torch.equal(out[1], prefix[0])


def test_no_prefix_is_the_plain_sampler_bit_for_bit(rtc_setup):
    model, cond, noise, prefix = rtc_setup
    with torch.inference_mode():
        plain = model.sample(cond, noise, 4)
        empty = model.sample(cond, noise, 4, prefix=_guide([], prefix[:0], [], []))
        untouched = model.sample(cond, noise, 4, prefix=_guide([1], prefix, [2], [True]))
    assert torch.equal(plain, empty)
    assert torch.equal(untouched[0], plain[0])  # a row without a prefix is sampled as if alone in its batch
    assert not torch.allclose(untouched[1], plain[1], atol=1e-3)


def test_guidance_pulls_the_overlap_towards_the_prefix_monotonically_in_beta(rtc_setup):
    model, cond, noise, prefix = rtc_setup
    distances = []
    with torch.inference_mode():
        for beta in (0.0, 1.0, 5.0, 20.0):
            out = model.sample(cond, noise, 6, prefix=_guide([1], prefix, [2], [True], beta=beta, length=[12]))
            distances.append(float((out[1, 2:12] - prefix[0, 2:12]).abs().mean()))
    assert all(b < a for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] < 0.6 * distances[0]


def test_hard_prefix_freezes_only_the_delay(rtc_setup):
    model, cond, noise, prefix = rtc_setup
    with torch.inference_mode():
        out = model.sample(cond, noise, 4, prefix=_guide([0], prefix, [5], [False]))
    assert torch.equal(out[0, :5], prefix[0, :5])
    assert not torch.allclose(out[0, 5:], prefix[0, 5:], atol=1e-2)


@pytest.mark.parametrize("cfg", [False, True])
def test_a_mixed_batch_equals_each_row_alone(tiny, rtc_setup, cfg):
    """Plain, hard-prefix and RTC rows in one batch (with CFG on two of them) agree with each alone."""
    model, cond, noise, prefix = rtc_setup
    _, feats = tiny
    with torch.no_grad():
        c = [cond.rows(0, 1), cond.rows(1, 2), cond.rows(0, 1)]
        u = model.condition(model.vl_tokens([feats[-1:]], [None]))
    noise3 = torch.cat([noise, noise[:1] * 0.5])
    target = torch.cat([prefix, prefix.flip(1)])
    batch_guide = _guide([1, 2], target, [3, 2], [True, False], length=[14, 10])
    scale = torch.tensor([1.5, 2.0])
    guided = torch.tensor([1, 2]) if cfg else None
    with torch.inference_mode():
        both = model.sample(
            Conditioning.cat(c),
            noise3,
            4,
            Conditioning.cat([u, u]) if cfg else None,
            scale if cfg else 1.0,
            guided=guided,
            prefix=batch_guide,
        )
        alone = [
            model.sample(c[0], noise3[0:1], 4),
            model.sample(
                c[1], noise3[1:2], 4, u if cfg else None, 1.5, prefix=_guide([0], target[:1], [3], [True], length=[14])
            ),
            model.sample(
                c[2], noise3[2:3], 4, u if cfg else None, 2.0, prefix=_guide([0], target[1:], [2], [False], length=[10])
            ),
        ]
    assert torch.allclose(both, torch.cat(alone), atol=1e-5)
