"""Compiled and graphed paths on the tiny golden checkpoint: compiled == eager, bucketing, static buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nitrogen.inference.compiled import (
    GraphedSampler,
    accelerate_engine,
    bucket_for,
    compile_model,
    is_compiled,
    pad_rows,
    uncompile_model,
)
from nitrogen.inference.engine import PolicyEngine, PredictRequest
from nitrogen.model.checkpoint import load_model
from nitrogen.model.modeling import NitroGenModel


def _cond(model: NitroGenModel, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = model.vision_spec.image_size
    feats = model.encode_frames(torch.rand(batch, 3, size, size, generator=g) * 2 - 1)
    return model.condition(model.vl_tokens(list(feats[:, None]), [None] * batch))


def test_buckets_and_padding() -> None:
    assert [bucket_for(b) for b in (1, 2, 3, 4, 5, 8, 9, 32)] == [1, 2, 4, 4, 8, 8, 16, 32]
    assert bucket_for(3, (8, 2)) == 8
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(33)
    with pytest.raises(ValueError, match="at least 1"):
        bucket_for(0)
    t = torch.ones(3, 2)
    padded = pad_rows(t, 5)
    assert padded.shape == (5, 2) and torch.equal(padded[:3], t) and not padded[3:].any()
    assert pad_rows(t, 3) is t
    with pytest.raises(ValueError):
        pad_rows(t, 2)


@torch.no_grad()
def test_static_buffer_sampler_matches_sample(tiny_ckpt: Path) -> None:
    """Each bucket's static buffers give sample()'s actions, batch after batch, whatever the padding."""
    model, _ = load_model(tiny_ckpt)
    sampler = GraphedSampler(model, 4, capture=False)
    for batch, seed in ((3, 0), (1, 1), (4, 2), (3, 3)):
        cond = _cond(model, batch, seed)
        noise = torch.randn(batch, 18, 25, generator=torch.Generator().manual_seed(seed + 10))
        got = sampler(cond, noise)
        assert got.shape == (batch, 18, 25) and got.dtype == torch.float32
        torch.testing.assert_close(got, model.sample(cond, noise, 4), rtol=1e-5, atol=1e-6)
    assert sorted(sampler.graphs) == [1, 4]  # batches of 3 and 4 share the bucket of 4
    with pytest.raises(ValueError, match="rows"):
        sampler(_cond(model, 2), torch.zeros(3, 18, 25))
    with pytest.raises(ValueError, match="CUDA"):
        GraphedSampler(model, 4, capture=True)


def test_engine_fast_path_gives_the_same_actions(tiny_ckpt: Path) -> None:
    engine = PolicyEngine.from_checkpoint(tiny_ckpt)
    frames = [np.full((64, 48, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    pre = [engine.preprocess(f) for f in frames]
    noise = torch.randn(3, 18, 25, generator=torch.Generator().manual_seed(0))

    def run() -> np.ndarray:
        with torch.inference_mode():
            tokens = engine.encode(pre)
            requests = [
                PredictRequest(history=[t], game_id=None, noise=n, cfg_scale=1.0)
                for t, n in zip(tokens, noise, strict=True)
            ]
            return engine.sample(requests)

    eager = run()
    accelerate_engine(engine, "graphs")
    assert engine.fast_sample is not None
    np.testing.assert_allclose(run(), eager, rtol=1e-5, atol=1e-6)
    accelerate_engine(engine, "off")
    assert engine.fast_sample is None and not is_compiled(engine.model)
    with pytest.raises(ValueError, match="fast path"):
        accelerate_engine(engine, "turbo")  # type: ignore[arg-type]


@pytest.mark.slow  # inductor compiles two graphs: tens of seconds on 2 cores
@torch.no_grad()
def test_compiled_denoiser_and_tower_match_eager(tiny_ckpt: Path) -> None:
    torch._dynamo.reset()
    model, _ = load_model(tiny_ckpt)
    size = model.vision_spec.image_size
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    noise = torch.randn(2, 18, 25, generator=torch.Generator().manual_seed(4))
    feats = model.encode_frames(pixels)
    cond = model.condition(model.vl_tokens(list(feats[:, None]), [None] * 2))
    eager = model.sample(cond, noise, 2)
    compile_model(model)
    assert is_compiled(model)
    torch.testing.assert_close(model.encode_frames(pixels), feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.sample(cond, noise, 2), eager, rtol=1e-4, atol=1e-4)
    uncompile_model(model)
    assert not is_compiled(model) and "velocity" not in model.__dict__
    torch._dynamo.reset()
