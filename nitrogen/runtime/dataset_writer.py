"""Record an agent's play as a fine-tuning dataset (parquet shards in the gameplay schema).

>>> from nitrogen.envs import make_env
>>> from nitrogen.runtime.agents import make_agent
>>> with make_env("ale:Breakout") as env:                                   # doctest: +SKIP
...     summary = record(env, make_agent("scripted", "ale:Breakout"), episodes=2, out_dir="runs/bo")

Layout of ``out_dir``::

    data/shard-00000.parquet, data/shard-00001.parquet, ...   # rows in play order
    info.json                                                 # run metadata, per-episode scores

Each row is one frame: ``image`` (PNG, HF ``datasets.Image``), the 17 boolean button columns of
:data:`nitrogen.data.BUTTON_COLUMNS`, ``j_left`` / ``j_right`` (``[x, y]``, +y down), ``episode_id``,
``frame`` (index inside the episode), ``reward`` (received for this frame's action), ``score``
(running episode score after it) and ``game``. The image of a row is the observation the agent
chose that row's action from. Shards are written to a temporary name and renamed into place, so a
crash loses at most the shard being filled; ``info.json`` is rewritten after every shard
(``"complete": false``) and at the end (``"complete": true``).

``explore`` injects noise the DART way: now and then a burst of random actions is *executed*, while
every row keeps the agent's own action for its frame. The dataset then shows how the agent recovers
from states it would never reach by itself, which is what a cloned policy needs when its own small
mistakes take it there. A deterministic expert on a deterministic game (sticky actions are off) would
otherwise play the same episode on every seed.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .agents import Agent
from ..data.schema import BUTTON_COLUMNS, PHYSICAL_BUTTONS
from .agents import RandomAgent
from ..gamepad import GamepadState

DATA_DIR = "data"
INFO_FILE = "info.json"


def _features() -> Any:
    """The ``datasets.Features`` of a recorded shard."""
    import datasets

    feats: dict[str, Any] = {"image": datasets.Image()}
    feats.update({col: datasets.Value("bool") for col in BUTTON_COLUMNS})
    feats["j_left"] = datasets.Sequence(datasets.Value("float32"), length=2)
    feats["j_right"] = datasets.Sequence(datasets.Value("float32"), length=2)
    feats["episode_id"] = datasets.Value("int64")
    feats["frame"] = datasets.Value("int64")
    feats["reward"] = datasets.Value("float64")
    feats["score"] = datasets.Value("float64")
    feats["game"] = datasets.Value("string")
    return datasets.Features(feats)


def png_bytes(frame: np.ndarray) -> bytes:
    """Lossless PNG encoding of an RGB ``uint8`` ``(H, W, 3)`` frame."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def state_columns(state: GamepadState) -> dict[str, Any]:
    """One pad state -> its schema cells: 17 button booleans, ``j_left``, ``j_right``.

    Triggers are columns too: pressed when their axis is at least 0.5 (the model's threshold).
    """
    held = state.physical_buttons()
    row: dict[str, Any] = {col: name in held for name, col in zip(PHYSICAL_BUTTONS, BUTTON_COLUMNS, strict=True)}
    row["j_left"] = [float(v) for v in state.left_stick]
    row["j_right"] = [float(v) for v in state.right_stick]
    return row


class _ShardWriter:
    """Buffers rows and writes them as numbered parquet shards, atomically."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.features = _features()
        self.columns: dict[str, list[Any]] = {name: [] for name in self.features}
        self.shards: list[str] = []
        self.rows_written = 0

    def __len__(self) -> int:
        return len(self.columns["frame"])

    def add(self, row: dict[str, Any]) -> None:
        for name, values in self.columns.items():
            values.append(row[name])

    def flush(self) -> None:
        if not len(self):
            return
        import datasets

        name = f"shard-{len(self.shards):05d}.parquet"
        tmp = self.data_dir / f".{name}.tmp"  # not *.parquet: loaders never see a partial shard
        n = len(self)
        import pyarrow.parquet as pq

        # The Dataset's Arrow table carries the HF features in its schema metadata, so loaders
        # decode ``image`` as an Image; pyarrow writes it without datasets' progress bars.
        table = datasets.Dataset.from_dict(self.columns, features=self.features).data.table
        pq.write_table(table, tmp)
        os.replace(tmp, self.data_dir / name)
        self.shards.append(name)
        self.rows_written += n
        self.columns = {k: [] for k in self.columns}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def record(
    env: Any,
    agent: Agent,
    *,
    episodes: int,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    max_frames: int | None = None,
    shard_frames: int = 500,
    game: str | None = None,
    explore: float = 0.0,
    explore_frames: tuple[int, int] = (4, 16),
) -> dict[str, Any]:
    """Play ``episodes`` episodes of ``env`` with ``agent`` and write them under ``out_dir``.

    Episode ``i`` is reset with seed ``seed + i`` (env and agent); it ends when the env
    terminates or truncates, or after ``max_frames`` frames. The agent acts once per frame.
    Rows go to ``out_dir/data/shard-NNNNN.parquet``, ``shard_frames`` rows per shard (the last
    may be shorter). ``game`` (default ``env.spec_id``) fills the ``game`` column.

    ``explore`` is the chance, per frame, that a burst of random actions (a random D-pad direction
    and FIRE, held ``explore_frames`` frames, inclusive bounds) starts; during a burst the env gets
    the random action and the row still gets the agent's. The bursts are seeded by the episode seed.

    Returns the summary also written to ``out_dir/info.json``: ``env``, ``agent``, ``game``,
    ``episodes``, ``frames`` (total), ``seeds``, ``scores`` and ``episode_frames`` (per episode),
    ``rows_written`` and ``shards`` (on disk), ``complete`` and ``interrupted``. Raises
    ``FileExistsError`` if ``out_dir/data`` already holds parquet files. An exception from the env or
    agent propagates; completed shards stay on disk. A ``KeyboardInterrupt`` (Ctrl-C, or the human
    policy's window closed) ends the recording early instead, with every played frame written.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if shard_frames < 1:
        raise ValueError(f"shard_frames must be >= 1, got {shard_frames}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if not 0.0 <= explore < 1.0:
        raise ValueError(f"explore must lie in [0, 1), got {explore}")
    low, high = explore_frames
    if not 1 <= low <= high:
        raise ValueError(f"explore_frames must satisfy 1 <= low <= high, got {explore_frames}")
    out = Path(out_dir)
    data_dir = out / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.glob("*.parquet")):
        raise FileExistsError(f"{data_dir} already holds parquet shards; record into an empty folder")

    env_id = str(getattr(env, "spec_id", type(env).__name__))
    game_name = game if game is not None else env_id
    writer = _ShardWriter(data_dir)
    seeds: list[int] = []
    scores: list[float] = []
    episode_frames: list[int] = []
    explored = 0

    def summary(complete: bool) -> dict[str, Any]:
        return {
            "env": env_id,
            "agent": str(getattr(agent, "name", type(agent).__name__)),
            "game": game_name,
            "episodes": len(scores),
            "frames": int(sum(episode_frames)),
            "seeds": list(seeds),
            "scores": list(scores),
            "episode_frames": list(episode_frames),
            "rows_written": writer.rows_written,
            "shards": [f"{DATA_DIR}/{s}" for s in writer.shards],
            "shard_frames": shard_frames,
            "fps": getattr(env, "fps", None),
            "explore": explore,
            "explored_frames": explored,
            "complete": complete,
        }

    interrupted = started = False
    score, n = 0.0, 0
    try:
        for episode in range(episodes):
            ep_seed = seed + episode
            frame, _ = env.reset(seed=ep_seed)
            agent.reset(env, ep_seed)
            # One random choice per burst (held at least the longest burst), bursts timed by `rng`.
            noise = RandomAgent(ep_seed, min_hold=high, max_hold=high) if explore > 0 else None
            rng = np.random.default_rng([ep_seed, 1])
            burst = 0
            score, n, started = 0.0, 0, True
            seeds.append(ep_seed)
            while max_frames is None or n < max_frames:
                state = agent.act(env, frame)
                if not isinstance(state, GamepadState):
                    raise TypeError(f"agent {agent!r} returned {type(state).__name__}, expected GamepadState")
                executed = state
                if noise is not None:
                    if burst == 0 and rng.random() < explore:
                        noise.reset(env)
                        burst = int(rng.integers(low, high + 1))
                    if burst > 0:
                        executed, burst = noise.act(env, frame), burst - 1
                        explored += 1
                next_frame, reward, terminated, truncated, _ = env.step(executed)
                score += float(reward)
                writer.add(
                    {
                        "image": {"bytes": png_bytes(frame), "path": None},
                        **state_columns(state),
                        "episode_id": episode,
                        "frame": n,
                        "reward": float(reward),
                        "score": score,
                        "game": game_name,
                    }
                )
                n += 1
                if len(writer) >= shard_frames:
                    writer.flush()
                    _write_json(out / INFO_FILE, summary(complete=False))
                frame = next_frame
                if terminated or truncated:
                    break
            scores.append(score)
            episode_frames.append(n)
            started = False
    except KeyboardInterrupt:
        # A deliberate stop (Ctrl-C, or a person closing the window): keep every frame played.
        interrupted = True
        if started:  # else it stopped between episodes
            scores.append(score)
            episode_frames.append(n)
    writer.flush()
    result = summary(complete=True) | {"interrupted": interrupted}
    _write_json(out / INFO_FILE, result)
    return result
