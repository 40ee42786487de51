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
