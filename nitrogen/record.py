"""Record an agent's play as a fine-tuning dataset (parquet shards in the gameplay schema).

>>> from nitrogen.envs import make_env
>>> from nitrogen.experts import make_agent
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
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .agents import Agent
from .data.schema import BUTTON_COLUMNS, PHYSICAL_BUTTONS
from .gamepad import GamepadState

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
    row: dict[str, Any] = {}
    for name, col in zip(PHYSICAL_BUTTONS, BUTTON_COLUMNS, strict=True):
        if name == "LEFT_TRIGGER":
            row[col] = bool(state.left_trigger >= 0.5)
        elif name == "RIGHT_TRIGGER":
            row[col] = bool(state.right_trigger >= 0.5)
        else:
            row[col] = name in state.buttons
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
) -> dict[str, Any]:
    """Play ``episodes`` episodes of ``env`` with ``agent`` and write them under ``out_dir``.

    Episode ``i`` is reset with seed ``seed + i`` (env and agent); it ends when the env
    terminates or truncates, or after ``max_frames`` frames. The agent acts once per frame.
    Rows go to ``out_dir/data/shard-NNNNN.parquet``, ``shard_frames`` rows per shard (the last
    may be shorter). ``game`` (default ``env.spec_id``) fills the ``game`` column.

    Returns the summary also written to ``out_dir/info.json``: ``env``, ``agent``, ``game``,
    ``episodes``, ``frames`` (total), ``seeds``, ``scores`` and ``episode_frames`` (per episode),
    ``rows_written`` and ``shards`` (on disk) and ``complete``. Raises ``FileExistsError`` if
    ``out_dir/data`` already holds parquet files. An exception from the env or agent propagates;
    completed shards stay on disk.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if shard_frames < 1:
        raise ValueError(f"shard_frames must be >= 1, got {shard_frames}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
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
            "complete": complete,
        }

    for episode in range(episodes):
        ep_seed = seed + episode
        seeds.append(ep_seed)
        frame, _ = env.reset(seed=ep_seed)
        agent.reset(env, ep_seed)
        score, n = 0.0, 0
        while max_frames is None or n < max_frames:
            state = agent.act(env, frame)
            if not isinstance(state, GamepadState):
                raise TypeError(f"agent {agent!r} returned {type(state).__name__}, expected GamepadState")
            next_frame, reward, terminated, truncated, _ = env.step(state)
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
    writer.flush()
    result = summary(complete=True)
    _write_json(out / INFO_FILE, result)
    return result
