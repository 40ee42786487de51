"""Shared pytest fixtures: the golden vectors in ../shared/golden, next to the checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "index.json").is_file():
        pytest.fail(f"golden vectors not found at {GOLDEN}; ../shared must sit beside the checkout")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_cases(golden_dir: Path) -> list[dict]:
    return json.loads((golden_dir / "index.json").read_text())


@pytest.fixture(scope="session")
def tiny_ckpt(golden_dir: Path) -> Path:
    """The smallest golden checkpoint in the released layout (1.5M parameters)."""
    return golden_dir / "released_layout.pt"


@pytest.fixture(scope="session")
def tiny_ckpt_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint in the released format whose tower takes 224x224 frames (7x7 patches of 32),
    built from the ``tiny`` preset on the registered ``google/siglip-base-patch16-224`` encoder."""
    from dataclasses import replace

    from nitrogen.model.checkpoint import save_checkpoint
    from nitrogen.model.presets import PRESETS, init_checkpoint

    preset = replace(PRESETS["tiny"], encoder_name="google/siglip-base-patch16-224")
    path = tmp_path_factory.mktemp("ckpt224") / "tiny224.pt"
    raw = init_checkpoint(preset, seed=0)
    save_checkpoint(path, raw.state_dict, raw.config, raw.game_mapping)
    return path
