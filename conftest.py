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
