"""Fresh models from presets: they save in the released format, load back, and train from `init:`."""

from __future__ import annotations

import pytest
import torch

from nitrogen.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from nitrogen.model.presets import PRESETS, UnknownPresetError, init_checkpoint, preset_config, sincos_positions
from nitrogen.training.run import starting_checkpoint


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_saves_in_the_released_format_and_loads_back(name, tmp_path):
    raw = init_checkpoint(name, seed=3)
    path = save_checkpoint(tmp_path / "init.pt", raw.state_dict, raw.config, raw.game_mapping)
    back = read_checkpoint(path)  # weights_only=True, like ng.pt
    assert back.config == raw.config
    assert back.state_dict.keys() == raw.state_dict.keys()
    model, _ = load_model(path)
    preset = PRESETS[name]
    assert model.vision_spec.hidden_size == preset.width and model.vision_spec.num_heads == preset.heads
    assert model.vision_spec.tokens_per_frame == preset.tokens_per_frame
    assert len(model.vision_encoder.encoder.layers) == preset.vision_layers
    assert len(model.model.transformer_blocks) == preset.dit_layers
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, raw.state_dict[key]), key


def test_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = init_checkpoint("tiny", seed=1).state_dict
    after = torch.rand(3)
    assert torch.equal(before, after)
    b = init_checkpoint("tiny", seed=1).state_dict
    c = init_checkpoint("tiny", seed=2).state_dict
    key = "vision_encoder.embeddings.patch_embedding.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_preset_config_matches_the_sizes():
    cfg = preset_config("agent-small")
    p = PRESETS["agent-small"]
    assert cfg.model_cfg.hidden_size == p.width
    assert cfg.model_cfg.diffusion_model_cfg.num_layers == p.dit_layers
    assert cfg.modality_cfg.action_shift == p.action_shift
    assert cfg.tokenizer_cfg.num_visual_tokens_per_frame == (p.image_size // p.patch) ** 2


def test_the_agent_preset_fits_the_40_mb_budget():
    raw = init_checkpoint("agent-small")
    assert sum(t.numel() * t.element_size() for t in raw.state_dict.values()) <= 40e6


def test_unknown_preset_and_starting_points(tmp_path):
    with pytest.raises(UnknownPresetError, match="agent-small"):
        init_checkpoint("huge")
    fresh = starting_checkpoint("init:tiny", seed=0)
    assert fresh.path is None and fresh.config.model_cfg.hidden_size == PRESETS["tiny"].width
    path = save_checkpoint(tmp_path / "t.pt", fresh.state_dict, fresh.config)
    assert starting_checkpoint(path).path == path


def test_sincos_positions_encode_row_and_column_separately():
    grid, width = 8, 64
    table = sincos_positions(grid, width).reshape(grid, grid, width)  # (row, col, D)
    rows, cols = table[..., : width // 2], table[..., width // 2 :]
    assert torch.allclose(rows, rows[:, :1].expand_as(rows))  # the first half ignores the column
    assert torch.allclose(cols, cols[:1].expand_as(cols))  # the second half ignores the row
    assert torch.equal(rows[:, 0], cols[0])  # the same code for row r and column r
    flat = table.reshape(grid * grid, width)
    assert torch.cdist(flat, flat).add(torch.eye(grid * grid)).min() > 0.1  # every patch its own code
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(grid, 30)


def test_position_init_of_the_presets():
    key = "vision_encoder.embeddings.position_embedding.weight"
    small, tiny = PRESETS["agent-small"], PRESETS["tiny"]
    assert small.position_init == "sincos" and tiny.position_init == "random"
    table = init_checkpoint("agent-small", 0).state_dict[key]
    assert torch.equal(table, sincos_positions(256 // small.patch, small.width))
    random_table = init_checkpoint("tiny", 0).state_dict[key]
    assert not torch.allclose(random_table, sincos_positions(256 // tiny.patch, tiny.width))
