"""Record an agent's play as a fine-tuning dataset (parquet shards in the gameplay schema).

>>> from nitrogen.envs import make_env
>>> from nitrogen.runtime.sources import make_policy
>>> with make_env("ale:Breakout") as env:                                   # doctest: +SKIP
...     summary = record(env, make_policy("scripted", env=env), episodes=2, out_dir="runs/bo")

Layout of ``out_dir``::

    data/shard-00000.parquet, data/shard-00001.parquet, ...   # rows in play order
    info.json                                                 # run metadata, per-episode scores

Each row is one frame: ``image`` (PNG, HF ``datasets.Image``), the 17 boolean button columns of
:data:`nitrogen.data.BUTTON_COLUMNS`, ``j_left`` / ``j_right`` (``[x, y]``, +y down), ``episode_id``,
``frame`` (index inside the episode), ``reward`` (received for this frame's action), ``score``
(running episode score after it) and ``game``. The image of a row is the frame its action was
played on. Play goes through the one episode loop (:func:`nitrogen.runtime.loop.run_episode`), so a
model policy's chunks are timed exactly as in ``nitrogen play`` (its action shift and
``actions_per_chunk``, sync mode unless asked); :class:`DatasetWriter` is the loop observer that writes the rows.
Shards are written atomically (:mod:`nitrogen.atomic`), so a crash loses at most the shard being
filled; ``info.json`` is rewritten after every shard (``"complete": false``) and at the end
(``"complete": true``).

``explore`` injects noise the DART way: now and then a burst of random actions is *executed*, while
every row keeps the policy's own action for its frame. The dataset then shows how the agent recovers
from states it would never reach by itself, which is what a cloned policy needs when its own small
mistakes take it there. A deterministic expert on a deterministic game (sticky actions are off) would
otherwise play the same episode on every seed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import atomic_path, atomic_write_json
from ..data.schema import BUTTON_COLUMNS, PHYSICAL_BUTTONS
from ..gamepad import GamepadState
from ..policy import Policy
from .loop import EpisodeStats, Observer, PlayConfig, Step, run_episode
from .sources import as_policy

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
        n = len(self)
        import pyarrow.parquet as pq

        # The Dataset's Arrow table carries the HF features in its schema metadata, so loaders
        # decode ``image`` as an Image; pyarrow writes it without datasets' progress bars.
        table = datasets.Dataset.from_dict(self.columns, features=self.features).data.table
        with atomic_path(self.data_dir / name) as tmp:  # a dot-name: loaders never see a partial shard
            pq.write_table(table, tmp)
        self.shards.append(name)
        self.rows_written += n
        self.columns = {k: [] for k in self.columns}


class DatasetWriter(Observer):
    """The loop observer that writes played frames as rows, shard by shard, with ``info.json``.

    A row holds the frame an action was played on and the policy's action for it (not an
    exploration burst's). ``describe`` gives the run metadata that ``info.json`` starts with.
    """

    def __init__(self, out_dir: Path, *, game: str, shard_frames: int, describe: dict[str, Any]) -> None:
        self.out = out_dir
        self.writer = _ShardWriter(out_dir / DATA_DIR)
        self.game, self.shard_frames, self.describe = game, shard_frames, describe
        self.seeds: list[int | None] = []
        self.scores: list[float] = []
        self.episode_frames: list[int] = []
        self.explored = 0

    def on_episode_start(self, episode: int, seed: int | None) -> None:
        self.seeds.append(seed)

    def on_step(self, step: Step) -> None:
        self.writer.add(
            {
                "image": {"bytes": png_bytes(step.observation), "path": None},
                **state_columns(step.action),
                "episode_id": step.episode,
                "frame": step.index,
                "reward": step.reward,
                "score": step.score,
                "game": self.game,
            }
        )
        if len(self.writer) >= self.shard_frames:
            self.writer.flush()
            self.write_info(complete=False)

    def on_episode_end(self, stats: EpisodeStats) -> None:
        if stats.frames or not stats.interrupted:  # an interrupt between episodes adds none
            self.scores.append(stats.score)
            self.episode_frames.append(stats.frames)
        else:
            self.seeds.pop()
        self.explored += stats.explored

    def summary(self, complete: bool) -> dict[str, Any]:
        return {
            **self.describe,
            "game": self.game,
            "episodes": len(self.scores),
            "frames": int(sum(self.episode_frames)),
            "seeds": list(self.seeds[: len(self.scores)]),
            "scores": list(self.scores),
            "episode_frames": list(self.episode_frames),
            "rows_written": self.writer.rows_written,
            "shards": [f"{DATA_DIR}/{s}" for s in self.writer.shards],
            "shard_frames": self.shard_frames,
            "fps": self.describe.get("fps"),
            "explore": self.describe.get("explore"),
            "explored_frames": self.explored,
            "complete": complete,
        }

    def write_info(self, complete: bool, **extra: Any) -> dict[str, Any]:
        doc = self.summary(complete) | extra
        atomic_write_json(self.out / INFO_FILE, doc)
        return doc


def record(
    env: Any,
    policy: Policy | Any,
    *,
    episodes: int,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    max_frames: int | None = None,
    shard_frames: int = 500,
    game: str | None = None,
    explore: float = 0.0,
    explore_frames: tuple[int, int] = (4, 16),
    actions_per_chunk: int | None = None,
    allow_menu: bool | None = None,
    mode: Literal["sync", "async"] = "sync",
) -> dict[str, Any]:
    """Play ``episodes`` episodes of ``env`` with ``policy`` and write them under ``out_dir``.

    ``policy`` is any :class:`~nitrogen.policy.Policy` (a model, a replay, an agent through
    :func:`~nitrogen.runtime.sources.make_policy`), or a bare frame-by-frame agent, which is wrapped
    by the one adapter. Episode ``i`` is reset with seed ``seed + i`` (env and agent); it ends when
    the env terminates or truncates, or after ``max_frames`` frames. Rows go to
    ``out_dir/data/shard-NNNNN.parquet``, ``shard_frames`` rows per shard (the last may be shorter).
    ``game`` (default ``env.spec_id``) fills the ``game`` column. ``mode`` is the loop's (sync: the
    game waits for the policy; async: it plays on its clock). Menu buttons of a model policy are
    masked as in ``nitrogen play`` unless ``allow_menu``; an agent's (a person's) are kept.

    ``explore`` is the chance, per frame, that a burst of random actions (a random D-pad direction
    and FIRE, held ``explore_frames`` frames, inclusive bounds) starts; during a burst the env gets
    the random action and the row still gets the policy's. The bursts are seeded by the episode seed.

    Returns the summary also written to ``out_dir/info.json``: ``env``, ``agent``, ``game``,
    ``episodes``, ``frames`` (total), ``seeds``, ``scores`` and ``episode_frames`` (per episode),
    ``rows_written`` and ``shards`` (on disk), ``complete`` and ``interrupted``. Raises
    ``FileExistsError`` if ``out_dir/data`` already holds parquet files. An exception from the env or
    policy propagates; completed shards stay on disk. A ``KeyboardInterrupt`` (Ctrl-C, or the human
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

    policy = as_policy(policy, env)
    spec = policy.spec
    config = PlayConfig(
        mode=mode,
        max_frames=max_frames,
        allow_menu=spec.kind != "model" if allow_menu is None else allow_menu,
        actions_per_chunk=actions_per_chunk,
        explore=explore,
        explore_frames=explore_frames,
        video=False,
    )
    env_id = str(getattr(env, "spec_id", type(env).__name__))
    describe = {"env": env_id, "agent": spec.name, "fps": getattr(env, "fps", None), "explore": explore}
    writer = DatasetWriter(out, game=game if game is not None else env_id, shard_frames=shard_frames, describe=describe)
    interrupted = False
    for episode in range(episodes):
        stats = run_episode(env, policy, config, [writer], seed=seed + episode, episode=episode)
        if stats.interrupted:
            interrupted = True  # a deliberate stop: keep every frame played
            break
    writer.writer.flush()
    return writer.write_info(complete=True, interrupted=interrupted)
