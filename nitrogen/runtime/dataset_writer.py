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

**A driver and a labeller (DAgger, HG-DAgger).** With ``label`` set, the frames are still played by
the one episode loop, but each frame's action is decided by a *driver* and each row stores the
*labeller's* action for that frame. :class:`LabelledEnv` wraps the env between the loop and the
game: on every ``step`` it asks the labeller, on the very state the frame shows, what it would do,
and then steps the game with the driver's action. Nothing else changes, so frames and actions stay
aligned exactly as in plain recording (the action shift, the chunk boundaries, async play):

* ``label="scripted"``: the scripted expert reads the emulator RAM, so it labels any state the
  agent reaches. Per frame the expert drives with probability ``beta`` (its action is executed),
  the policy otherwise; ``beta=1`` is plain expert recording.
* ``label="human"``: the policy drives; while the person holds the takeover key, or touches the pad
  or the mapped keys, the person drives and labels (``intervention: true``). Rows where nobody
  intervened are written too, labelled with the policy's own action and ``intervention: false``,
  so training can weight or drop them (``nitrogen finetune --passive-weight``).

Labelled rows carry four more columns: ``driver`` (``policy``, ``expert``, ``human``, or
``explore`` for a frame of an exploration burst), ``agrees`` (the executed action is the label, as
the game sees it: the same Atari action), ``intervention`` and ``labeller`` (``scripted`` or
``human``). ``info.json`` adds ``label``, ``beta``, per-driver frame counts and ``agreement``: the
share of policy-driven frames whose action equals the label (agreement in the agent's own states).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import atomic_path, atomic_write_json
from ..data.images import png_bytes
from ..data.schema import BUTTON_COLUMNS, PHYSICAL_BUTTONS, pad_features
from ..gamepad import NEUTRAL, GamepadState
from ..policy import Policy
from .loop import EpisodeStats, Observer, PlayConfig, Step, run_episode
from .sources import as_policy

DATA_DIR = "data"
INFO_FILE = "info.json"
LABEL_KINDS: tuple[str, ...] = ("scripted", "human")
"""The columns a labelled recording adds (see the module docstring)."""


@dataclass(frozen=True)
class Decision:
    """What one frame of a labelled recording did: the label, what was sent, who sent it."""

    label: GamepadState
    executed: GamepadState
    driver: str
    intervention: bool = False


class ScriptedLabeller:
    """A scripted expert as labeller: it labels every frame; it drives with probability ``beta``.

    The coin is drawn per frame from a generator seeded by the episode seed, so a recording is
    reproducible. ``beta=1`` executes the expert's every action: plain expert recording.
    """

    kind = "scripted"

    def __init__(self, expert: Any, beta: float = 0.0) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        self.expert, self.beta = expert, float(beta)
        self.name = str(getattr(expert, "name", type(expert).__name__))
        self.rng = np.random.default_rng(0)

    def reset(self, env: Any, seed: int | None) -> None:
        self.expert.reset(env, seed)
        self.rng = np.random.default_rng(None if seed is None else [seed, 2])

    def decide(self, env: Any, frame: np.ndarray, proposed: GamepadState) -> Decision:
        label = self.expert.act(env, frame)  # on the state this frame shows, before it is stepped
        expert_drives = self.beta >= 1.0 or (self.beta > 0.0 and self.rng.random() < self.beta)
        return Decision(label, label if expert_drives else proposed, "expert" if expert_drives else "policy")


class HumanLabeller:
    """A person as labeller (HG-DAgger): the policy plays until the person takes over.

    ``person`` has ``read(env, frame) -> (state, takeover_held)`` and ``reset(env, seed)``:
    :class:`~nitrogen.runtime.human.HumanAgent` (window, keyboard and pad), or a scripted stream in
    tests. The person drives on a frame while the takeover key is held or their input is not neutral;
    such a row is labelled with their state and marked ``intervention``. Other rows keep the
    policy's action as the label.
    """

    kind = "human"

    def __init__(self, person: Any) -> None:
        self.person = person
        self.name = str(getattr(person, "name", "human"))

    def reset(self, env: Any, seed: int | None) -> None:
        self.person.reset(env, seed)

    def close(self) -> None:
        close = getattr(self.person, "close", None)  # the person's window
        if close is not None:
            close()

    def decide(self, env: Any, frame: np.ndarray, proposed: GamepadState) -> Decision:
        state, held = self.person.read(env, frame)
        if held or state != NEUTRAL:
            return Decision(state, state, "human", intervention=True)
        return Decision(proposed, proposed, "policy")


def make_labeller(
    kind: str, env: Any, *, seed: int | None = None, beta: float = 0.0, takeover_key: str | None = None
) -> Any:
    """The labeller ``kind`` names (``scripted`` or ``human``) for ``env``."""
    if kind == "scripted":
        from .agents import make_agent

        return ScriptedLabeller(make_agent("scripted", str(env.spec_id), seed), beta)
    if kind == "human":
        if beta:
            raise ValueError("--beta applies to the scripted labeller; a person takes over with the takeover key")
        from .human import HumanAgent

        return HumanLabeller(HumanAgent(seed, takeover_key=takeover_key))
    raise ValueError(f"unknown labeller {kind!r}: use one of {', '.join(LABEL_KINDS)}")


def same_action(env: Any, a: GamepadState, b: GamepadState) -> bool:
    """Whether ``a`` and ``b`` do the same in ``env``: the same Atari action where the env maps
    pads to actions, else the same schema cells (buttons and sticks)."""
    to_action = getattr(env, "to_env_action", None)
    if to_action is not None:
        return to_action(a) == to_action(b)
    return state_columns(a) == state_columns(b)


class LabelledEnv:
    """``env`` with a labeller between the episode loop and the game (see the module docstring).

    ``step(state)`` asks the labeller for its :class:`Decision` on the current frame (``state`` is
    what the loop would send), steps the game with ``decision.executed`` and keeps the decision in
    :attr:`last` for the dataset writer. Every other attribute is the env's.
    """

    def __init__(self, env: Any, labeller: Any) -> None:
        self.env, self.labeller = env, labeller
        self.frame: np.ndarray | None = None
        self.last: Decision | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.frame, info = self.env.reset(seed=seed)
        self.labeller.reset(self.env, seed)
        self.last = None
        return self.frame, info

    def step(self, state: GamepadState) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        decision = self.labeller.decide(self.env, self.frame, state)
        self.last = decision
        frame, reward, terminated, truncated, info = self.env.step(decision.executed)
        self.frame = frame
        return frame, reward, terminated, truncated, info


def _features(labelled: bool = False) -> Any:
    """The ``datasets.Features`` of a recorded shard (with :data:`~nitrogen.data.schema.LABEL_COLUMNS` when ``labelled``)."""
    import datasets

    feats = pad_features(episode_id="int64")
    feats["reward"] = datasets.Value("float64")
    feats["score"] = datasets.Value("float64")
    feats["game"] = datasets.Value("string")
    if labelled:
        feats["driver"] = datasets.Value("string")
        feats["agrees"] = datasets.Value("bool")
        feats["intervention"] = datasets.Value("bool")
        feats["labeller"] = datasets.Value("string")
    return datasets.Features(feats)


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

    def __init__(self, data_dir: Path, labelled: bool = False) -> None:
        self.data_dir = data_dir
        self.features = _features(labelled)
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


class LabelTally:
    """Counts a labelled recording's frames per driver and the policy-driven frames that agree."""

    def __init__(self) -> None:
        self.drivers: dict[str, int] = {}
        self.policy_frames = 0
        self.policy_agrees = 0
        self.interventions = 0

    def add(self, labelled: LabelledEnv, step: Step) -> dict[str, Any]:
        """The label cells of ``step``'s row (the decision :class:`LabelledEnv` just made), counted."""
        decision = labelled.last
        driver = decision.driver
        if driver == "policy" and step.executed != step.action:
            driver = "explore"  # the loop sent a burst of random actions, not the policy's
        agrees = same_action(labelled.env, decision.executed, decision.label)
        self.drivers[driver] = self.drivers.get(driver, 0) + 1
        if driver == "policy":
            self.policy_frames += 1
            self.policy_agrees += agrees
        self.interventions += decision.intervention
        return {
            **state_columns(decision.label),  # the labeller's action, not the driver's
            "driver": driver,
            "agrees": agrees,
            "intervention": decision.intervention,
            "labeller": labelled.labeller.kind,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "driver_frames": dict(self.drivers),
            "policy_frames": self.policy_frames,
            "intervention_frames": self.interventions,
            "agreement": self.policy_agrees / self.policy_frames if self.policy_frames else None,
        }


class DatasetWriter(Observer):
    """The loop observer that writes played frames as rows, shard by shard, with ``info.json``.

    A row holds the frame an action was played on and the policy's action for it (not an
    exploration burst's). ``describe`` gives the run metadata that ``info.json`` starts with.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        game: str,
        shard_frames: int,
        describe: dict[str, Any],
        labelled: LabelledEnv | None = None,
    ) -> None:
        self.out = out_dir
        self.labelled = labelled
        self.writer = _ShardWriter(out_dir / DATA_DIR, labelled=labelled is not None)
        self.game, self.shard_frames, self.describe = game, shard_frames, describe
        self.seeds: list[int | None] = []
        self.scores: list[float] = []
        self.episode_frames: list[int] = []
        self.explored = 0
        self.tally = LabelTally()

    def on_episode_start(self, episode: int, seed: int | None) -> None:
        self.seeds.append(seed)

    def on_step(self, step: Step) -> None:
        row = {
            "image": {"bytes": png_bytes(step.observation), "path": None},
            **state_columns(step.action),
            "episode_id": step.episode,
            "frame": step.index,
            "reward": step.reward,
            "score": step.score,
            "game": self.game,
        }
        if self.labelled is not None:
            row |= self.tally.add(self.labelled, step)
        self.writer.add(row)
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
            **(self.tally.summary() if self.labelled is not None else {}),
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
    label: str | Any | None = None,
    beta: float = 0.0,
    takeover_key: str | None = None,
    chunking: Literal["naive", "prefix", "rtc"] | None = None,
    execute: int | None = None,
    latency_ms: float | None = None,
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
    ``chunking``, ``execute`` and ``latency_ms`` are the loop's (:class:`PlayConfig`): async play
    with real-time chunking, and simulated latency, work while a model drives.

    ``explore`` is the chance, per frame, that a burst of random actions (a random D-pad direction
    and FIRE, held ``explore_frames`` frames, inclusive bounds) starts; during a burst the env gets
    the random action and the row still gets the policy's. The bursts are seeded by the episode seed.

    Returns the summary also written to ``out_dir/info.json``: ``env``, ``agent``, ``game``,
    ``episodes``, ``frames`` (total), ``seeds``, ``scores`` and ``episode_frames`` (per episode),
    ``rows_written`` and ``shards`` (on disk), ``complete`` and ``interrupted``. Raises
    ``FileExistsError`` if ``out_dir/data`` already holds parquet files. An exception from the env or
    policy propagates; completed shards stay on disk. A ``KeyboardInterrupt`` (Ctrl-C, or the human
    policy's window closed) ends the recording early instead, with every played frame written.

    ``label`` (``"scripted"``, ``"human"``, or a labeller object with ``kind``, ``reset`` and
    ``decide``) records with a driver and a labeller (see the module docstring); ``beta`` is the
    scripted expert's chance to drive a frame, ``takeover_key`` the human labeller's switch key.
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
        chunking=chunking,
        execute=execute,
        latency_ms=latency_ms,
    )
    env_id = str(getattr(env, "spec_id", type(env).__name__))
    describe = {"env": env_id, "agent": spec.name, "fps": getattr(env, "fps", None), "explore": explore}
    labelled = None
    if label is not None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        labeller = (
            make_labeller(label, env, seed=seed, beta=beta, takeover_key=takeover_key)
            if isinstance(label, str)
            else label
        )
        labelled = LabelledEnv(env, labeller)
        describe |= {"label": labeller.kind, "labeller": labeller.name, "beta": beta, "takeover_key": takeover_key}
    writer = DatasetWriter(
        out,
        game=game if game is not None else env_id,
        shard_frames=shard_frames,
        describe=describe,
        labelled=labelled,
    )
    played = labelled if labelled is not None else env
    interrupted = False
    try:
        for episode in range(episodes):
            stats = run_episode(played, policy, config, [writer], seed=seed + episode, episode=episode)
            if stats.interrupted:
                interrupted = True  # a deliberate stop: keep every frame played
                break
    finally:
        if labelled is not None and isinstance(label, str) and hasattr(labelled.labeller, "close"):
            labelled.labeller.close()  # a labeller made here (the human's window) is closed here
    writer.writer.flush()
    return writer.write_info(complete=True, interrupted=interrupted)
