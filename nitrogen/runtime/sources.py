"""Where actions come from: one factory for every policy source, and the one agent adapter.

``make_policy(source)`` understands every source a command accepts:

* ``ckpt:PATH``: a checkpoint run in this process (:class:`~nitrogen.inference.session.InferenceSession`);
  ``PATH`` may be ``hf://OWNER/REPO[/FILE][@REVISION]`` (:mod:`nitrogen.model.hub`);
* ``default``: the shipped default agent, in process;
* ``server:ADDR`` (``tcp://HOST:PORT``): a remote ``nitrogen serve`` (:class:`~nitrogen.serving.client.ModelClient`);
* ``replay:PATH``: a run folder or its ``actions.jsonl``, played back frame by frame (:class:`ReplayPolicy`);
* ``random``, ``scripted``, ``human``: frame-by-frame agents (:mod:`nitrogen.runtime.agents`), which may
  read the game itself and so need ``env``; :class:`AgentPolicy` makes them policies.

Everything returned is a :class:`~nitrogen.policy.Policy` with a typed
:class:`~nitrogen.policy.PolicySpec`, so the episode loop drives them all the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..actions import ACTION_DIM
from ..gamepad import GamepadState
from ..policy import ActionChunk, Policy, PolicySpec
from .agents import Agent

SOURCE_KINDS: tuple[str, ...] = ("ckpt:PATH", "default", "server:ADDR", "replay:PATH", "random", "scripted", "human")
AGENT_SOURCES: frozenset[str] = frozenset({"random", "scripted", "human"})
"""Sources that read the game itself: they need the env at construction."""

_NEUTRAL_ACTION = GamepadState().to_action_vector()  # sticks centred, no button


class AgentPolicy:
    """A frame-by-frame :class:`~nitrogen.runtime.agents.Agent` as a :class:`~nitrogen.policy.Policy`.

    Each prediction is a chunk of one action decided on the game's own frame (no resize,
    ``image_size=None``), so the loop asks again every frame. The agent may read ``env``; on
    :meth:`reset` it is reset with the seed of the episode the env just started.
    """

    def __init__(self, agent: Agent, env: Any, *, kind: str) -> None:
        self.agent, self.env = agent, env
        name = str(getattr(agent, "name", type(agent).__name__))
        self._spec = PolicySpec(
            name=name, kind=kind, action_horizon=1, action_shift=0, image_size=None, step_rate_hz=float(env.fps)
        )

    @property
    def spec(self) -> PolicySpec:
        return self._spec

    def predict(self, frame: Any) -> ActionChunk:
        t0 = time.perf_counter()
        state = self.agent.act(self.env, frame)
        if not isinstance(state, GamepadState):
            raise TypeError(f"agent {self.agent!r} returned {type(state).__name__}, expected GamepadState")
        timing = {"total_ms": (time.perf_counter() - t0) * 1e3}
        return ActionChunk.from_action_tensor(state.to_action_vector()[None], timing)

    def reset(self) -> None:
        # The env has just started the episode; an env-like without ``episode_seed`` gives None.
        self.agent.reset(self.env, getattr(self.env, "episode_seed", None))

    def info(self) -> dict[str, Any]:
        return {"policy": self._spec.kind, "name": self._spec.name}

    def close(self) -> None:
        close = getattr(self.agent, "close", None)  # the human agent's window
        if close is not None:
            close()


class ReplayPolicy:
    """Plays back recorded actions, one per frame: a :class:`~nitrogen.policy.Policy` for replays and tests.

    ``actions`` is an ``(N, 25)`` array of raw action vectors, a run folder, or the path of a run's
    ``actions.jsonl``, whose lines hold the executed pad ``state`` of every frame (or an ``action``
    vector). Each ``predict`` returns the next ``horizon`` actions, ignoring the frame; after the
    end it returns neutral actions. Played in sync mode (one action per frame, none skipped), a
    replay sends exactly the recorded pad states again.
    """

    def __init__(self, actions: np.ndarray | str | Path, horizon: int = 18):
        self.source = "array"
        if isinstance(actions, (str, Path)):
            self.source = str(actions)
            actions = read_actions(actions)
        self.actions = np.asarray(actions, dtype=np.float32)
        if self.actions.ndim != 2 or self.actions.shape[1] != ACTION_DIM:
            raise ValueError(f"recorded actions must be (N, {ACTION_DIM}), got {self.actions.shape}")
        self.horizon = horizon
        self.position = 0
        self._spec = PolicySpec(name=f"replay:{self.source}", kind="replay", action_horizon=horizon, image_size=None)

    @property
    def spec(self) -> PolicySpec:
        return self._spec

    def predict(self, frame: Any) -> ActionChunk:
        chunk = np.tile(_NEUTRAL_ACTION, (self.horizon, 1))
        part = self.actions[self.position : self.position + self.horizon]
        chunk[: len(part)] = part
        self.position += self.horizon
        return ActionChunk.from_action_tensor(chunk)

    def reset(self) -> None:
        self.position = 0

    def info(self) -> dict[str, Any]:
        return {
            "policy": "replay",
            "source": self.source,
            "actions": int(self.actions.shape[0]),
            "action_horizon": self.horizon,
        }

    def close(self) -> None:
        """Nothing to release."""


def read_actions(path: str | Path) -> np.ndarray:
    """The ``(N, 25)`` action vectors of a run folder's ``actions.jsonl`` (or of that file).

    A line's executed pad ``state`` goes through the one codec (:meth:`GamepadState.to_action_vector`);
    a line may instead carry a raw 25-dim ``action`` vector. A bad line is named by its number.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "actions.jsonl"
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            where = f"{path}:{i + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not a JSON line ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if "state" in record:
                try:
                    rows.append(GamepadState.from_dict(record["state"]).to_action_vector())
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
            elif "action" in record:
                vector = np.asarray(record["action"], dtype=np.float32)
                if vector.shape != (ACTION_DIM,) or not np.isfinite(vector).all():
                    raise ValueError(f"{where}: 'action' must be {ACTION_DIM} finite numbers")
                rows.append(vector)
            else:
                raise ValueError(f"{where}: no pad 'state' (or 'action' vector) in this line")
    return np.asarray(rows, dtype=np.float32).reshape(-1, ACTION_DIM)


class DelayedPolicy:
    """Wraps a policy and adds a fixed latency to every prediction (to measure slow policies)."""

    def __init__(self, policy: Policy, delay_s: float):
        self.policy, self.delay_s = policy, float(delay_s)

    @property
    def spec(self) -> PolicySpec:
        return self.policy.spec

    def predict(self, frame: Any, **kwargs: Any) -> ActionChunk:
        time.sleep(self.delay_s)
        return self.policy.predict(frame, **kwargs)

    def reset(self) -> None:
        self.policy.reset()

    def info(self) -> dict[str, Any]:
        return {**self.policy.info(), "added_delay_s": self.delay_s}

    def close(self) -> None:
        self.policy.close()


def make_policy(
    source: str,
    *,
    env: Any = None,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    game: str | int | None = None,
    num_steps: int | None = None,
    button_order: str | None = None,
) -> Policy:
    """The policy a source string names (see the module docstring).

    ``seed`` seeds an in-process model's noise and an agent's choices; ``device``, ``dtype``,
    ``game``, ``num_steps`` (Euler steps) and ``button_order`` (the checkpoint's, see
    :data:`nitrogen.actions.BUTTON_ORDERS`; default alphabetical) apply to in-process models. Raises ``ValueError`` for an unknown source, and
    :class:`~nitrogen.runtime.experts.NoExpertError` (a ``LookupError``) when ``scripted`` has no
    expert for ``env``.
    """
    kind, _, value = source.partition(":")
    if kind in ("ckpt", "default"):
        from ..inference.session import InferenceSession

        if kind == "default":
            from ..model.card import agent_path

            value = str(agent_path())
        if not value:
            raise ValueError("ckpt: needs a path, e.g. ckpt:runs/mygame/model.pt")
        order = {} if button_order is None else {"button_order": button_order}
        return InferenceSession.from_checkpoint(
            value, device=device, dtype=dtype, game=game, seed=seed, num_steps=num_steps, **order
        )
    if kind == "server":
        from ..serving.client import ModelClient

        if not value:
            raise ValueError("server: needs an address, e.g. server:tcp://127.0.0.1:5555")
        return ModelClient(value)
    if kind == "replay":
        if not value:
            raise ValueError("replay: needs a run folder or an actions.jsonl")
        return ReplayPolicy(value)
    if source in AGENT_SOURCES:
        if env is None:
            raise ValueError(f"the {source!r} policy reads the game itself: it needs the env")
        if source == "human":
            from .human import HumanAgent

            return AgentPolicy(HumanAgent(seed), env, kind="human")
        from .agents import make_agent

        return AgentPolicy(make_agent(source, str(env.spec_id), seed), env, kind=source)
    raise ValueError(f"unknown policy {source!r}: use one of {', '.join(SOURCE_KINDS)}")


def as_policy(obj: Policy | Agent, env: Any) -> Policy:
    """``obj`` itself if it is a policy; a frame-by-frame agent wrapped by :class:`AgentPolicy`."""
    if isinstance(obj, Policy):
        return obj
    if isinstance(obj, Agent):
        return AgentPolicy(obj, env, kind=getattr(obj, "kind", "agent"))
    raise TypeError(f"{type(obj).__name__} is neither a Policy (predict/reset/close/spec) nor an Agent (act/reset)")


def has_policy_for(source: str, env_id: str) -> bool:
    """Whether ``source`` can play ``env_id`` (a scripted expert exists only for some games)."""
    if source != "scripted":
        return True
    from .experts import EXPERTS

    return env_id.strip().lower() in {key.lower() for key in EXPERTS}


def policy_label(spec: str) -> str:
    """A readable label for a ``--policy`` spec, for charts.

    ``ckpt:PATH`` shows as the name of the agent card (``agent.json``) beside the checkpoint when
    there is a valid one, else as ``<folder>/<file>`` (``ckpt:/a/b/runs/x/model.pt`` ->
    ``x/model.pt``); ``replay:PATH`` as ``replay:<file>``. Everything else (``random``,
    ``scripted``, ``server:ADDR``) stays as it is.
    """
    kind, sep, value = spec.partition(":")
    if not sep or kind not in ("ckpt", "replay") or not value:
        return spec
    path = Path(value)
    if kind == "replay":
        return f"replay:{path.name}"
    from ..model.card import CARD_FILE, AgentCard

    card = path.parent / CARD_FILE
    if card.is_file():
        try:
            return AgentCard.model_validate_json(card.read_text(encoding="utf-8")).name
        except (OSError, ValueError):  # not a card of ours: fall back to the path
            pass
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def policy_labels(specs: Iterable[str]) -> dict[str, str]:
    """``spec -> label`` by :func:`policy_label`; specs whose labels would collide keep their spec."""
    specs = list(dict.fromkeys(specs))
    labels = {spec: policy_label(spec) for spec in specs}
    taken: dict[str, int] = {}
    for label in labels.values():
        taken[label] = taken.get(label, 0) + 1
    return {spec: (label if taken[label] == 1 else spec) for spec, label in labels.items()}


__all__ = [
    "AGENT_SOURCES",
    "AgentPolicy",
    "as_policy",
    "DelayedPolicy",
    "ReplayPolicy",
    "has_policy_for",
    "make_policy",
    "policy_label",
    "policy_labels",
    "read_actions",
]
