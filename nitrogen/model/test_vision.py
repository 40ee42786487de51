import pytest
import torch
from transformers import SiglipVisionConfig

from nitrogen.errors import UnknownVisionEncoderError
from nitrogen.model.vision import KNOWN_ENCODERS, build_vision_tower, lookup_spec, spec_from_weights


def test_registry_has_the_released_encoders():
    for name in ("google/siglip2-large-patch16-256", "google/siglip-large-patch16-256"):
        spec = lookup_spec(name)
        assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.mlp_size) == (1024, 24, 16, 4096)
        assert (spec.patch_size, spec.image_size, spec.tokens_per_frame) == (16, 256, 256)
        assert spec.activation == "gelu_pytorch_tanh" and spec.layer_norm_eps == 1e-6


def test_tower_is_flat_and_matches_the_spec():
    spec = KNOWN_ENCODERS["google/siglip-base-patch16-224"]
    with torch.device("meta"):
        tower = build_vision_tower(spec)
    keys = tower.state_dict().keys()
    assert "embeddings.patch_embedding.weight" in keys and "head.probe" in keys
    assert sum(k.startswith("encoder.layers.") and k.endswith("fc1.weight") for k in keys) == spec.num_layers


def test_locally_cached_config_is_used_for_other_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    SiglipVisionConfig(
        hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=6, image_size=128, patch_size=32
    ).save_pretrained(tmp_path / "my-siglip")
    spec = lookup_spec(str(tmp_path / "my-siglip"))
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.tokens_per_frame) == (96, 3, 6, 16)


def test_unknown_name_without_a_cached_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UnknownVisionEncoderError, match="registered encoders .*google/siglip2-large-patch16-256"):
        lookup_spec("someone/some-vit")


def test_reduced_geometry_is_read_from_the_weights():
    shapes = {
        "vision_encoder.embeddings.patch_embedding.weight": (64, 3, 64, 64),
        "vision_encoder.embeddings.position_embedding.weight": (16, 64),
        "vision_encoder.encoder.layers.0.mlp.fc1.weight": (128, 64),
        "vision_encoder.encoder.layers.1.mlp.fc1.weight": (128, 64),
    }
    spec = spec_from_weights("google/siglip-large-patch16-256", shapes, reduced_heads=4)
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.mlp_size) == (64, 2, 4, 128)
    assert (spec.patch_size, spec.image_size, spec.tokens_per_frame) == (64, 256, 16)
    full = spec_from_weights("google/siglip-large-patch16-256", {})
    assert full == KNOWN_ENCODERS["google/siglip-large-patch16-256"]


def test_geometry_beyond_bounds_is_a_checkpoint_error():
    from dataclasses import replace

    from nitrogen.errors import CheckpointError
    from nitrogen.model.vision import check_spec

    released = KNOWN_ENCODERS["google/siglip2-large-patch16-256"]
    assert check_spec(released) is released
    for change, message in [
        ({"num_layers": 257}, r"num_layers must be an integer in 0\.\.256"),
        ({"num_heads": 0}, "num_heads must be an integer"),
        ({"num_heads": 7}, "not divisible by 7"),
        ({"patch_size": 512}, "patch 512 is larger than its image 256"),
        ({"patch_size": 1}, "65536 tokens per frame"),
        ({"image_size": 10**6}, "image_size must be an integer"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            check_spec(replace(released, **change))
    with pytest.raises(CheckpointError, match="not a square grid"):
        spec_from_weights(
            "google/siglip-large-patch16-256",
            {
                "vision_encoder.embeddings.patch_embedding.weight": (64, 3, 64, 64),
                "vision_encoder.embeddings.position_embedding.weight": (15, 64),
            },
        )
