import json

import pytest
from pydantic import ValidationError

from nitrogen.model.configuration import CheckpointConfig, MixerConfig, ModelConfig


@pytest.fixture()
def released(golden_dir) -> dict:
    return json.loads((golden_dir / "ng_ckpt_config.json").read_text())


def test_released_config_round_trips_with_extra_fields(released):
    cfg = CheckpointConfig.model_validate(released)
    assert cfg.to_dict() == released
    assert cfg.tokenizer_cfg.model_extra == {"use_action_mask": True}


def test_defaults_are_the_released_model(released):
    default = CheckpointConfig().to_dict()
    for section in ("model_cfg", "modality_cfg"):
        assert default[section] == released[section]
    tok = dict(released["tokenizer_cfg"])
    tok.pop("use_action_mask")
    assert default["tokenizer_cfg"] == tok


def test_inconsistent_widths_are_rejected(released):
    bad = json.loads(json.dumps(released))
    bad["model_cfg"]["vl_self_attention_cfg"]["num_attention_heads"] = 8
    with pytest.raises(ValidationError, match="VL mixer width"):
        CheckpointConfig.model_validate(bad)


def test_field_validation_names_the_problem():
    with pytest.raises(ValidationError, match="activation_fn"):
        MixerConfig(activation_fn="relu6")
    with pytest.raises(ValidationError, match="old_layout"):
        CheckpointConfig.model_validate({"tokenizer_cfg": {"old_layout": True}})
    with pytest.raises(ValidationError, match="action_horizon"):
        CheckpointConfig.model_validate({"tokenizer_cfg": {"action_horizon": 16}})
    assert ModelConfig().diffusion_model_cfg.is_cross_attention_block(0)
    assert not ModelConfig().diffusion_model_cfg.is_cross_attention_block(1)


def test_sizes_have_generous_upper_bounds(released):
    from nitrogen.model import configuration as c

    # The released model and a config with every size at its bound both validate.
    CheckpointConfig.model_validate(released)
    at_limit = json.loads(json.dumps(released))
    m = at_limit["model_cfg"]
    m["diffusion_model_cfg"].update(num_layers=c.MAX_LAYERS, max_num_positional_embeddings=c.MAX_POSITIONS)
    m["vl_self_attention_cfg"].update(num_layers=c.MAX_LAYERS)
    m.update(
        num_inference_timesteps=c.MAX_INFERENCE_STEPS,
        num_timestep_buckets=c.MAX_TIMESTEP_BUCKETS,
        max_seq_len=c.MAX_POSITIONS,
        max_num_embodiments=c.MAX_EMBODIMENTS,
    )
    at_limit["tokenizer_cfg"]["max_sequence_length"] = c.MAX_VL_TOKENS
    at_limit["modality_cfg"].update(frame_per_sample=c.MAX_CONTEXT_FRAMES, frame_spacing=c.MAX_FRAME_SPACING)
    CheckpointConfig.model_validate(at_limit)

    for section, field, value in [
        ("model_cfg", "num_inference_timesteps", c.MAX_INFERENCE_STEPS + 1),
        ("model_cfg", "num_timestep_buckets", c.MAX_TIMESTEP_BUCKETS + 1),
        ("model_cfg", "hidden_size", c.MAX_WIDTH + 1),
        ("tokenizer_cfg", "max_sequence_length", c.MAX_VL_TOKENS + 1),
        ("modality_cfg", "frame_per_sample", c.MAX_CONTEXT_FRAMES + 1),
        ("modality_cfg", "action_shift", c.MAX_HORIZON + 1),
    ]:
        bad = json.loads(json.dumps(released))
        bad[section][field] = value
        with pytest.raises(ValidationError, match=f"{section}.{field}"):
            CheckpointConfig.model_validate(bad)
    with pytest.raises(ValidationError, match="num_layers"):
        MixerConfig(num_layers=10**6)


def test_floats_must_be_finite_and_extra_head_count_is_checked(released):
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValidationError, match="noise_beta_alpha"):
            ModelConfig(noise_beta_alpha=value)
    for heads in (0, -1, 10**6, "16", True):
        with pytest.raises(ValidationError, match="vision_num_heads"):
            ModelConfig(vision_num_heads=heads)
    assert ModelConfig(vision_num_heads=4).model_extra == {"vision_num_heads": 4}
