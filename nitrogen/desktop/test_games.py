"""Real Debian games, driven end to end under a fresh Xvfb: XGalaga++ (plain Xlib, no _NET_WM_PID)
and XSoldier (SDL 1.2). Both move the player's ship with the arrow keys.

Each test starts the game on its own display, plays a replay that holds right and then left through
the keyboard backend, and reads the ship's position back from the run folder's video. The tests
skip where Xvfb or the games are not installed (``.ci/run`` installs them with apt-get).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nitrogen.desktop.capture import find_window
from nitrogen.desktop.pause import process_state
from nitrogen.policy import ActionChunk
from nitrogen.runtime.sources import ReplayPolicy

from .conftest import xvfb_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 games are Linux-only")

HORIZON = 18
FPS = 60.0


@dataclass(frozen=True)
class Game:
    binary: str
    screen: tuple[int, int]
    keymap: str  # a preset, or a file written into the test's folder
    start: str  # the pad button that starts a game, through the keymap
    warmup: int  # frames from the start press until the ship is on screen and steerable
    hold: int  # frames each direction is held
    band: tuple[int, int]  # rows of the frame where the ship flies
    margin: int  # columns at each side to ignore (XSoldier draws a border)
    ship_area: int  # the fewest pixels of a blob that is the ship (stars, shots and icons are smaller)


XGALAGA = Game("xgalaga++", (640, 480), "arrows", "NORTH", 48, 60, (440, 472), 0, 150)
XSOLDIER_KEYMAP = """\
name: xsoldier
buttons: {SOUTH: space, RIGHT_SHOULDER: Shift_L, DPAD_LEFT: Left, DPAD_RIGHT: Right, DPAD_UP: Up, DPAD_DOWN: Down}
left_stick: {up: Up, down: Down, left: Left, right: Right}
"""
XSOLDIER = Game("xsoldier", (640, 720), "xsoldier.yaml", "SOUTH", 118, 20, (595, 645), 12, 300)


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/games")
    if found is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install {name})")
    return found


@dataclass
class Running:
    game: Game
    display: str
    proc: subprocess.Popen[bytes]


def _start(game: Game) -> Iterator[Running]:
    binary = _binary(game.binary)
    with xvfb_server(*game.screen) as display:
        env = {**os.environ, "DISPLAY": display, "SDL_AUDIODRIVER": "dummy"}
        proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            find_window(proc.pid, display=display, timeout=20)  # it is up once its window is
            yield Running(game, display, proc)
        finally:
            os.kill(proc.pid, 18)  # SIGCONT first, in case a failed test left it stopped
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(params=[XGALAGA, XSOLDIER], ids=lambda g: g.binary)
def running(request: pytest.FixtureRequest) -> Iterator[Running]:
    yield from _start(request.param)


@pytest.fixture
def xgalaga() -> Iterator[Running]:
    yield from _start(XGALAGA)


def _replay(game: Game, folder: Path) -> tuple[Path, dict[str, int]]:
    """Start the game, wait, hold right, hold left, let go: as a run folder's actions.jsonl."""
    plan = [[game.start]] * 2 + [[]] * game.warmup + [["DPAD_RIGHT"]] * game.hold + [["DPAD_LEFT"]] * game.hold
    marks = {"before": len(plan) - 2 * game.hold, "right": len(plan) - game.hold, "left": len(plan)}
    plan += [[]] * 40
    marks["settled"] = marks["left"] + 16  # the game draws the last moves a few frames late (more under load)
    marks["end"] = len(plan) - 1
    path = folder / "actions.jsonl"
    path.write_text("".join(json.dumps({"state": {"buttons": b}}) + "\n" for b in plan))
    return path, marks


def _keymap(game: Game, folder: Path) -> str:
    if game.keymap.endswith(".yaml"):
        path = folder / game.keymap
        path.write_text(XSOLDIER_KEYMAP)
        return str(path)
    return game.keymap


def _frames(run_dir: Path) -> list[np.ndarray]:
    import av

    with av.open(str(run_dir / "clean.mp4")) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def ship_x(frame: np.ndarray, game: Game) -> float:
    """The x of the ship: the biggest bright blob in the band of rows where it flies, NaN when no
    blob is ship-sized (XSoldier's ship blinks after it appears; a star is then the biggest blob)."""
    import cv2

    top, bottom = game.band
    band = frame[top:bottom, game.margin : frame.shape[1] - game.margin]
    mask = (band.max(axis=2) > 100).astype(np.uint8)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))  # join the sprite's parts, video noise aside
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < game.ship_area:
        return float("nan")
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return float(centroids[biggest][0]) + game.margin


def _moved_right_then_left(frames: list[np.ndarray], game: Game, marks: dict[str, int]) -> dict[str, float]:
    # Frame k of the video is the one action k was played on, so the effect of the last right press
    # shows in the frames after it.
    def near(k: int) -> float:  # the median over a few frames: a sprite may blink or flicker
        found = [ship_x(frames[i], game) for i in range(max(k - 3, 0), min(k + 4, len(frames)))]
        return float(np.nanmedian(found)) if not np.isnan(found).all() else float("nan")

    xs = {name: near(k) for name, k in marks.items()}
    assert xs["right"] > xs["before"] + 30, xs  # held right: the ship went right
    assert xs["left"] < xs["right"] - 30, xs  # then left: it came back
    assert abs(xs["end"] - xs["settled"]) < 3, xs  # and stopped: the keys were released
    return xs


def test_play_keys_moves_the_ship_right_then_left(running: Running, tmp_path: Path) -> None:
    """`nitrogen play --process NAME --input keys` with a replay policy, on the real game."""
    from typer.testing import CliRunner

    from nitrogen.cli import app
    from nitrogen.desktop.keys import keys_down

    game = running.game
    actions, marks = _replay(game, tmp_path)
    args = ["play", "--process", game.binary, "--input", "keys", "--keymap", _keymap(game, tmp_path)]
    args += ["--replay", str(actions), "--max-frames", str(marks["end"] + 1), "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, args, env={"DISPLAY": running.display})
    assert result.exit_code == 0, result.output
    [run_dir] = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "episode.json").read_text())
    assert summary["frames"] == marks["end"] + 1 and summary["env"] == f"desktop:{game.binary}"
    frames = _frames(run_dir)
    assert len(frames) == marks["end"] + 1
    _moved_right_then_left(frames, game, marks)
    assert keys_down(["Left", "Right", "Up", "Down", "s", "z", "space"], display=running.display) == set()


class _Thinking:
    """A replay that checks, each time it is asked, that the game process is stopped."""

    def __init__(self, replay: ReplayPolicy, pid: int) -> None:
        self.replay, self.pid = replay, pid
        self.states: list[str | None] = []
        self.spec = replay.spec

    def predict(self, frame: Any) -> ActionChunk:
        self.states.append(process_state(self.pid))
        return self.replay.predict(frame)

    def reset(self) -> None:
        self.replay.reset()

    def info(self) -> dict[str, Any]:
        return self.replay.info()


def test_sync_mode_stops_the_game_while_the_policy_thinks_and_paces_each_action(
    xgalaga: Running, tmp_path: Path
) -> None:
    from nitrogen.desktop import make_desktop_env
    from nitrogen.runtime.loop import PlayConfig, play

    game = xgalaga.game
    actions, marks = _replay(game, tmp_path)
    env = make_desktop_env(game.binary, input="keys", keymap="arrows", display=xgalaga.display)
    policy = _Thinking(ReplayPolicy(actions, horizon=HORIZON), xgalaga.proc.pid)
    try:
        assert env.pauser is not None and env.pauser.pid == xgalaga.proc.pid  # the window's owner
        [summary] = play(env, policy, PlayConfig(mode="sync", max_frames=marks["end"] + 1), out_dir=tmp_path / "runs")
    finally:
        env.close()
    chunks = -(-(marks["end"] + 1) // HORIZON)
    assert summary["chunks"] == chunks
    assert policy.states == ["T"] * chunks  # stopped (SIGSTOP) whenever the policy was thinking
    assert process_state(xgalaga.proc.pid) in {"R", "S"}  # and running again afterwards

    # The env's timeline holds monotonic times of each pause, resume and step. Between a resume
    # and the next pause exactly one chunk is played, one action per 1/60 s frame of the game
    # clock, so those 18 actions span at least 18/60 = 0.3 s: the clock sleeps until each frame's
    # tick and never runs ahead. (An upper bound would be a wall-clock race on a shared machine;
    # docs/BENCHMARKS.md reports the measured spans.)
    events = list(env.timeline)
    kinds = "".join(k[0] for k, _ in events)
    full = "p" + "r" + "s" * HORIZON
    assert kinds.startswith(full * (chunks - 1)), kinds
    spans = []
    for c in range(chunks - 1):
        resumed = events[c * len(full) + 1][1]
        paused_next = events[(c + 1) * len(full)][1]
        spans.append(paused_next - resumed)
    assert min(spans) >= HORIZON / FPS, spans

    frames = _frames(Path(summary["run_dir"]))
    _moved_right_then_left(frames, game, marks)


def test_sigterm_ends_play_with_the_keys_released_and_the_game_running(xgalaga: Running, tmp_path: Path) -> None:
    """`kill PID` (SIGTERM, as `timeout` and service managers send) stops `nitrogen play` as Ctrl-C
    does: the game is resumed if it was stopped, every key is released, the run folder is written."""
    import time

    from nitrogen.desktop.keys import keys_down

    actions = tmp_path / "actions.jsonl"
    actions.write_text(json.dumps({"state": {"buttons": ["DPAD_RIGHT"]}}) + "\n")  # the replay holds it
    args = [sys.executable, "-m", "nitrogen.cli", "play", "--process", "xgalaga++", "--input", "keys"]
    args += ["--replay", str(actions), "--max-frames", "100000", "--mode", "sync", "--out", str(tmp_path / "runs")]
    env = {**os.environ, "DISPLAY": xgalaga.display}
    play = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while keys_down(["Right"], display=xgalaga.display) != {"Right"}:  # wait until it plays
            assert play.poll() is None and time.monotonic() < deadline, play.stdout.read() if play.stdout else ""
            time.sleep(0.05)
        play.terminate()
        output = play.communicate(timeout=60)[0].decode()
    finally:
        if play.poll() is None:
            play.kill()
    assert play.returncode == 0, output
    assert keys_down(["Right", "Left", "Up"], display=xgalaga.display) == set()
    assert process_state(xgalaga.proc.pid) in {"R", "S"}  # not left stopped (T)
    [run_dir] = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "episode.json").read_text())
    assert summary["interrupted"] and summary["frames"] > 0
