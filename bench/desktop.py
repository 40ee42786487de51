"""Desktop figures on a real game under Xvfb (issue 20): capture, key-event latency, play fps.

Needs Xvfb and XGalaga++ (Debian: ``apt-get install xvfb xgalaga++``). Each figure starts its own
Xvfb server and game, so the machine's display is never touched::

    python bench/desktop.py --out bench-desktop.json

* **capture**: :class:`ScreenCapture` of the game's window at 1280x720 (XGalaga++ switched to its
  1280x1024 mode on a 1280x720 screen, so the window is clipped to 1280x720), following the window
  (one geometry query per grab) and at a fixed region.
* **keys**: from :meth:`KeyboardMousePad.send` to an X client's window receiving the ``KeyPress``
  (a listener thread blocked in ``next_event``), through XTEST, alternating press and release.
* **play**: ``nitrogen play --process xgalaga++ --input keys`` with the shipped default agent's
  model on the real game, sync and async: frames per second and prediction latency from
  ``episode.json``; for sync, the spans of the chunks' 18 actions from the env's timeline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "nitrogen" / "assets" / "default-agent" / "model.pt"


def _free_display() -> int:
    for n in range(200, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@contextmanager
def game_on_xvfb(width: int, height: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fresh Xvfb with XGalaga++ running on it."""
    from nitrogen.desktop.capture import find_window

    n = _free_display()
    xvfb = subprocess.Popen(
        ["Xvfb", f":{n}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp", "-noreset"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    display = f":{n}"
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{n}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        binary = shutil.which("xgalaga++") or "/usr/games/xgalaga++"
        game = subprocess.Popen([binary], env={**os.environ, "DISPLAY": display}, stdout=subprocess.DEVNULL)
        try:
            find_window(game.pid, display=display, timeout=20)
            yield display, game
        finally:
            os.kill(game.pid, signal.SIGCONT)
            game.kill()
            game.wait(timeout=10)
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


def _stats(values_s: list[float]) -> dict[str, float]:
    a = np.asarray(values_s) * 1e3
    return {
        "n": len(a),
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
    }


def bench_capture(grabs: int) -> dict[str, Any]:
    from nitrogen.desktop.capture import ScreenCapture, find_window
    from nitrogen.desktop.keys import KeyboardMousePad
    from nitrogen.gamepad import GamepadState

    out: dict[str, Any] = {}
    with game_on_xvfb(1280, 720) as (display, game):
        # XGalaga++'s key 4 resizes its window to 1280x1024 (the screen clips it to 1280x720).
        keymap = {"name": "resize", "buttons": {"NORTH": "4"}}
        from nitrogen.desktop.keymap import KeyMap

        window = find_window(game.pid, display=display)
        with KeyboardMousePad(KeyMap.model_validate(keymap), window=window.id, display=display) as pad:
            pad.send(GamepadState(buttons=frozenset({"NORTH"})))
            pad.send(GamepadState())
        deadline = time.monotonic() + 10
        while find_window(game.pid, display=display).width < 1280 and time.monotonic() < deadline:
            time.sleep(0.05)
        for follow in (True, False):
            cap = ScreenCapture.for_process(game.pid, display=display)
            if not follow:
                cap.follow = None
            with cap:
                frame = cap.grab()
                times = []
                t_start = time.perf_counter()
                for _ in range(grabs):
                    t0 = time.perf_counter()
                    cap.grab()
                    times.append(time.perf_counter() - t0)
                wall = time.perf_counter() - t_start
            out["follow" if follow else "fixed"] = {
                "shape": list(frame.shape),
                **_stats(times),
                "fps": grabs / wall,
            }
    return out


def bench_keys(presses: int) -> dict[str, Any]:
    from Xlib import X
    from Xlib import display as xdisplay

    from nitrogen.desktop.keys import KeyboardMousePad
    from nitrogen.gamepad import GamepadState

    with game_on_xvfb(640, 480) as (display, _game):
        disp = xdisplay.Display(display)
        screen = disp.screen()
        win = screen.root.create_window(
            0, 0, 100, 100, 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
            event_mask=X.KeyPressMask | X.KeyReleaseMask, override_redirect=True,
        )  # fmt: skip
        win.map()
        disp.sync()
        arrived: list[float] = []
        done = threading.Event()

        def listen() -> None:
            while len(arrived) < presses:
                ev = disp.next_event()
                if ev.type in (X.KeyPress, X.KeyRelease):
                    arrived.append(time.perf_counter())
            done.set()

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        sent: list[float] = []
        right, neutral = GamepadState(buttons=frozenset({"DPAD_RIGHT"})), GamepadState()
        with KeyboardMousePad("arrows", window=win.id, display=display) as pad:
            for i in range(presses):
                while len(arrived) < i:  # one event in flight at a time
                    time.sleep(0.0001)
                sent.append(time.perf_counter())
                pad.send(right if i % 2 == 0 else neutral)
            done.wait(10)
        disp.close()
    return _stats([a - s for s, a in zip(sent, arrived, strict=False)])


def bench_play(frames: int, out_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode in ("sync", "async"):
        with game_on_xvfb(640, 480) as (display, _game):
            runs = out_dir / f"play-{mode}"
            cmd = [
                sys.executable, "-m", "nitrogen.cli", "play", "--process", "xgalaga++", "--input", "keys",
                "--keymap", "arrows", "--ckpt", str(AGENT), "--device", "cpu", "--mode", mode,
                "--max-frames", str(frames), "--out", str(runs),
            ]  # fmt: skip
            subprocess.run(cmd, env={**os.environ, "DISPLAY": display}, check=True, capture_output=True)
            [run_dir] = runs.iterdir()
            summary = json.loads((run_dir / "episode.json").read_text())
            results[mode] = {
                k: summary.get(k)
                for k in ("frames", "real_fps", "effective_actions_per_s", "latency_p50_ms", "latency_p95_ms", "chunks")
            }
            results[mode]["run_dir"] = str(run_dir)
    return results


def bench_sync_spans(frames: int) -> dict[str, Any]:
    """The wall-clock span of each chunk's 18 actions in sync mode, from the env's monotonic timeline."""
    from nitrogen.desktop import make_desktop_env
    from nitrogen.runtime.loop import PlayConfig, play
    from nitrogen.runtime.sources import make_policy

    with game_on_xvfb(640, 480) as (display, _game):
        env = make_desktop_env("xgalaga++", input="keys", keymap="arrows", display=display)
        policy = make_policy(f"ckpt:{AGENT}", device="cpu")
        try:
            play(env, policy, PlayConfig(mode="sync", max_frames=frames, video=False))
        finally:
            env.close()
            policy.close()
    events = list(env.timeline)
    spans, pauses = [], []
    for i, (kind, t) in enumerate(events):
        if kind == "resume":
            nxt = next((t2 for k2, t2 in events[i + 1 :] if k2 == "pause"), None)
            if nxt is not None:
                spans.append(nxt - t)
        if kind == "pause" and i + 1 < len(events) and events[i + 1][0] == "resume":
            pauses.append(events[i + 1][1] - t)
    return {"chunk_span": _stats(spans), "paused_while_thinking": _stats(pauses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grabs", type=int, default=300)
    parser.add_argument("--presses", type=int, default=400)
    parser.add_argument("--frames", type=int, default=360)
    parser.add_argument("--out", type=Path, default=Path("bench-desktop.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.machine import machine_info

    work = args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(),
        "load_before": os.getloadavg(),
        "capture_1280x720": bench_capture(args.grabs),
        "key_latency": bench_keys(args.presses),
        "play": bench_play(args.frames, work),
        "sync_pacing": bench_sync_spans(args.frames),
        "load_after": os.getloadavg(),
    }
    from nitrogen.atomic import atomic_write_json

    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
