"""A desktop game through the play loop: the real pad encoding and pausing, with a fake device and screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nitrogen.actions import BUTTON_INDEX
from nitrogen.desktop import DesktopGameEnv, FakeUInputDevice, VirtualPad
from nitrogen.runtime.loop import PlayConfig, play
from nitrogen.runtime.sources import ReplayPolicy


class _Screen:
    """A game window whose pixels change every frame."""

    def __init__(self) -> None:
        self.frames = 0

    def grab(self) -> np.ndarray:
        self.frames += 1
        return np.full((72, 128, 3), self.frames % 256, np.uint8)


class _Pauser:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


def test_sync_play_pauses_around_each_prediction_and_drives_the_pad(tmp_path: Path) -> None:
    actions = np.zeros((36, 25), np.float32)
    actions[:, 21:] = 0.5
    actions[:18, BUTTON_INDEX["SOUTH"]] = 1.0  # A held for the first chunk
    actions[18:, BUTTON_INDEX["START"]] = 1.0  # START in the second: masked without --allow-menu
    device, pauser, screen = FakeUInputDevice(), _Pauser(), _Screen()
    env = DesktopGameEnv("game", screen, VirtualPad(device), pauser)
    config = PlayConfig(mode="sync", max_frames=36, video=False)
    [summary] = play(env, ReplayPolicy(actions), config, out_dir=tmp_path)
    env.close()
    assert summary["frames"] == 36 and summary["chunks"] == 2
    assert pauser.calls == ["pause", "resume", "pause", "resume", "resume"]
    events = device.events
    presses = [e for e in events if e[:2] == (1, 0x130)]
    assert presses == [(1, 0x130, 1), (1, 0x130, 0)]  # A pressed once, released once
    assert not [e for e in events if e[:2] == (1, 0x13B)]  # START (0x13b) never sent
    lines = [json.loads(x) for x in (Path(summary["run_dir"]) / "actions.jsonl").read_text().splitlines()]
    assert len(lines) == 36 and lines[0]["state"]["buttons"] == ["SOUTH"]


def test_desktop_env_is_live_and_rejects_unknown_inputs() -> None:
    import pytest

    from nitrogen.desktop import make_desktop_env

    assert DesktopGameEnv.live  # the play loop keeps it on the game clock in sync mode too
    with pytest.raises(ValueError, match="input must be 'pad' or 'keys'"):
        make_desktop_env(1, input="joystick")  # type: ignore[arg-type]


def test_cli_checks_input_and_keymap() -> None:
    from typer.testing import CliRunner

    from nitrogen.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["play", "--pid", "1", "--replay", "x.jsonl", "--input", "joystick"])
    assert result.exit_code == 1 and "--input must be pad or keys" in result.output
    result = runner.invoke(app, ["play", "--pid", "1", "--replay", "x.jsonl", "--keymap", "arrows"])
    assert result.exit_code == 1 and "--keymap goes with --input keys" in result.output
