from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitrogen.atomic import atomic_path, atomic_write, atomic_write_json


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write(target, '{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "c.csv", lambda f: f.write("x,y\n"))
    assert (tmp_path / "c.csv").read_text() == "x,y\n"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    atomic_write(target, "old")

    def boom(f) -> None:
        f.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise KeyError("no")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
