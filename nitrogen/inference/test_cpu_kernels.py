import pytest
import torch
from torch import nn

from nitrogen.inference.cpu_kernels import pack_linears, packing_available, unpack_linears
from nitrogen.model.modeling import CategorySpecificLinear

pytestmark = pytest.mark.skipif(
    not packing_available(torch.device("cpu"), torch.float32), reason="oneDNN is not available in this torch build"
)


def _layers(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).to(dtype), CategorySpecificLinear(
        1, 64, 32
    ).to(dtype)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
def test_packed_layers_compute_the_same_function(dtype, atol):
    mlp, cat = _layers(dtype)
    x = torch.randn(2, 18, 64, dtype=dtype)
    emb = torch.zeros(2, dtype=torch.long)
    with torch.inference_mode():
        want = cat(mlp(x), emb)
        assert pack_linears(mlp) == 2 and pack_linears(cat) == 1
        got = cat(mlp(x), emb)
    assert torch.allclose(got.float(), want.float(), atol=atol, rtol=0)
    assert all(hasattr(m, "_packed_weight") for m in (mlp[0], mlp[2], cat))


def test_modified_weights_bypass_the_stale_packed_copy():
    mlp, _ = _layers(torch.float32)
    pack_linears(mlp)
    x = torch.randn(5, 64)
    with torch.no_grad():
        mlp[2].weight.mul_(2.0)  # an optimizer step does the same: an in-place update
        got = mlp(x)
    unpack_linears(mlp)
    with torch.no_grad():
        want = mlp(x)
    assert torch.allclose(got, want, atol=1e-6)


def test_gradients_flow_through_packed_layers_when_training():
    mlp, _ = _layers(torch.float32)
    pack_linears(mlp)
    loss = mlp(torch.randn(3, 64)).square().sum()
    loss.backward()
    assert mlp[0].weight.grad is not None and torch.count_nonzero(mlp[0].weight.grad) > 0


def test_state_dict_is_unchanged_by_packing():
    mlp, cat = _layers(torch.float32)
    before = {k: v.clone() for k, v in {**mlp.state_dict(), **cat.state_dict()}.items()}
    pack_linears(mlp)
    pack_linears(cat)
    after = {**mlp.state_dict(), **cat.state_dict()}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    unpack_linears(mlp)
    assert not hasattr(mlp[0], "_packed_weight") and "forward" not in vars(mlp[0])


def test_cast_weights_bypass_the_packed_copy():
    mlp, _ = _layers(torch.float32)
    pack_linears(mlp)
    mlp.to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        got = mlp(x)
    unpack_linears(mlp)
    with torch.no_grad():
        assert torch.equal(got, mlp(x))


def test_gelu_is_fused_into_the_matmul_and_unfused_on_unpack():
    from nitrogen.model.layers import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(64, dropout=0.0, activation="gelu-approximate", final_dropout=True).eval()
    x = torch.randn(2, 18, 64)
    with torch.inference_mode():
        want = ff(x)
        pack_linears(ff)
        assert ff.net[0].proj._post_gelu == "tanh"
        got = ff(x)
    assert torch.allclose(got, want, atol=1e-5)
    unpack_linears(ff)
    assert "forward" not in vars(ff.net[0]) and not hasattr(ff.net[0].proj, "_post_gelu")
    with torch.inference_mode():
        assert torch.allclose(ff(x), want, atol=0)


def test_packed_vision_tower_matches_the_plain_one(tiny_ckpt):
    from nitrogen.model.checkpoint import load_model

    model, _ = load_model(tiny_ckpt)
    pixels = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        want = model.encode_frames(pixels)
        assert pack_linears(model.vision_encoder, 16) > 0
        mlp = model.vision_encoder.encoder.layers[0].mlp
        assert isinstance(mlp.activation_fn, nn.Identity)
        got = model.encode_frames(pixels)
        unpack_linears(model.vision_encoder)
        assert not isinstance(mlp.activation_fn, nn.Identity)
        again = model.encode_frames(pixels)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(again, want)
