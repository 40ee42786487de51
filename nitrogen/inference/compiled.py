"""Compiled and graphed inference: ``torch.compile`` of the per-step DiT and the vision tower, and the
fixed-shape denoising loop captured as a CUDA graph per batch-size bucket.

* :func:`compile_model` swaps, on one model instance, :meth:`NitroGenModel.velocity` (action encoder,
  DiT, decoder: what every Euler step runs) and :meth:`NitroGenModel.encode_frames` (the vision
  tower) for ``torch.compile``'d versions (inductor). ``sample()`` is untouched: it calls
  ``self.velocity``, which now resolves to the compiled one. :func:`uncompile_model` undoes it.
  On CPU the library's eager path already runs the DiT's matmuls on oneDNN pre-packed weights
  (:mod:`.cpu_kernels`); what compiling gains on top of that was not measured yet (see
  ``docs/BENCHMARKS.md``, issue 23), and compiling takes tens of seconds per shape, so it is opt-in.
* :class:`GraphedSampler` is the GPU path: the whole ``K``-step loop of a batch of ``B`` chunks has
  fixed shapes, so it is captured once into a ``torch.cuda.CUDAGraph`` and replayed, which removes
  the per-kernel launch cost that dominates a 1-18 row DiT step on a GPU. Shapes must be static, so
  batches are padded up to a bucket (:data:`BATCH_BUCKETS`, each captured on first use) and the
  padding rows are dropped from the output; rows never interact in the model, so padding does not
  change the real rows. With ``capture=False`` (any CPU) the same static-buffer logic runs eagerly,
  which is how it is tested without a GPU.

Use from an engine with :func:`accelerate_engine`: it sets ``PolicyEngine.fast_sample``, which the
engine calls for batches without classifier-free guidance.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..model.modeling import Conditioning, NitroGenModel, Schedule

BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
"""Batch sizes a graph is captured for; a batch runs in the smallest bucket that holds it."""

FastPath = Literal["off", "compile", "graphs"]

_EAGER = "_eager_methods"


def compile_model(
    model: NitroGenModel,
    *,
    denoiser: bool = True,
    vision: bool = True,
    mode: str | None = None,
    dynamic: bool | None = False,
) -> NitroGenModel:
    """Compile ``model``'s per-step denoiser and/or vision tower in place (returns ``model``).

    ``mode`` is ``torch.compile``'s (``None``: default; ``"reduce-overhead"`` uses CUDA graphs on
    GPU; ``"max-autotune"``). ``dynamic=False`` specialises on shapes (one compile per batch size).
    Compilation happens on the first call of each shape.
    """
    eager: dict[str, Callable[..., Any]] = model.__dict__.setdefault(_EAGER, {})
    names = [n for n, on in (("velocity", denoiser), ("encode_frames", vision)) if on]
    for name in names:
        if name in eager:
            continue  # already compiled
        eager[name] = getattr(model, name)
        setattr(model, name, torch.compile(eager[name], mode=mode, dynamic=dynamic))
    return model


def uncompile_model(model: NitroGenModel) -> NitroGenModel:
    """Back to the eager methods (returns ``model``)."""
    for name in model.__dict__.pop(_EAGER, {}):
        model.__dict__.pop(name, None)
    return model


def is_compiled(model: NitroGenModel) -> bool:
    return bool(model.__dict__.get(_EAGER))


# -------------------------------------------------------------------------------- buckets


def bucket_for(batch: int, buckets: Sequence[int] = BATCH_BUCKETS) -> int:
    """The smallest bucket that holds ``batch`` rows; ``ValueError`` if none does."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    ordered = sorted(buckets)
    i = bisect.bisect_left(ordered, batch)
    if i == len(ordered):
        raise ValueError(f"batch of {batch} exceeds the largest bucket ({ordered[-1]})")
    return ordered[i]


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t (B, ...)`` with zero rows appended up to ``rows``."""
    extra = rows - t.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {t.shape[0]} rows down to {rows}")
    return t if extra == 0 else torch.cat([t, t.new_zeros(extra, *t.shape[1:])])


@dataclass
class _Graph:
    """One bucket: static inputs, the captured (or eager) loop, and its static output."""

    noise: Tensor  # (R, H, A)
    kv: dict[int, tuple[Tensor, Tensor]]  # per cross block: (R, S, D) keys and values
    out: Tensor  # (R, H, A)
    replay: Callable[[], None]


class GraphedSampler:
    """``model.sample`` for batches without guidance, as one captured graph per batch bucket.

    Call with a :class:`Conditioning` of ``B`` rows and ``noise (B, H, A)``; returns ``(B, H, A)``
    float32 actions, equal to ``model.sample(cond, noise, num_steps)`` (exactly in eager mode, to
    kernel-choice rounding when captured). ``capture`` (default: on CUDA) records CUDA graphs;
    without it the static buffers are run eagerly. ``autocast`` is the dtype to run the loop under
    (e.g. bfloat16 on GPU with float32 weights), or None.
    """

    def __init__(
        self,
        model: NitroGenModel,
        num_steps: int,
        *,
        buckets: Sequence[int] = BATCH_BUCKETS,
        capture: bool | None = None,
        autocast: torch.dtype | None = None,
    ):
        self.model, self.num_steps = model, int(num_steps)
        self.buckets = tuple(sorted(buckets))
        self.device = next(model.parameters()).device
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.autocast = autocast
        self.schedule: Schedule = model.model.schedule(model.step_buckets(self.num_steps, self.device))
        self.graphs: dict[int, _Graph] = {}

    def _loop(self, noise: Tensor, kv: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
        enabled = self.autocast is not None
        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=enabled):
            return self.model.sample(Conditioning(kv), noise, self.num_steps, schedule=self.schedule)

    def _build(self, rows: int, cond: Conditioning, noise: Tensor) -> _Graph:
        static_noise = noise.new_zeros(rows, *noise.shape[1:])
        static_kv = {
            i: (k.new_zeros(rows, *k.shape[1:]), v.new_zeros(rows, *v.shape[1:])) for i, (k, v) in cond.kv.items()
        }
        if not self.capture:
            out = static_noise.new_zeros(rows, *noise.shape[1:], dtype=torch.float32)

            def run() -> None:
                out.copy_(self._loop(static_noise, static_kv))

            return _Graph(static_noise, static_kv, out, run)
        # Warm up on a side stream (allocator and kernels settle), then capture the loop.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                self._loop(static_noise, static_kv)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            captured = self._loop(static_noise, static_kv)
        return _Graph(static_noise, static_kv, captured, graph.replay)

    def __call__(self, cond: Conditioning, noise: Tensor) -> Tensor:
        B = noise.shape[0]
        if cond.batch_size != B:
            raise ValueError(f"conditioning has {cond.batch_size} rows, noise {B}")
        rows = bucket_for(B, self.buckets)
        graph = self.graphs.get(rows)
        if graph is None:
            graph = self.graphs[rows] = self._build(rows, cond, noise)
        # Copy the batch into the static inputs; the padding rows are zeroed, never stale.
        graph.noise.copy_(pad_rows(noise.to(graph.noise.dtype), rows))
        for i, (k, v) in cond.kv.items():
            graph.kv[i][0].copy_(pad_rows(k, rows))
            graph.kv[i][1].copy_(pad_rows(v, rows))
        graph.replay()
        return graph.out[:B].clone()


def accelerate_engine(engine: Any, path: FastPath, *, buckets: Sequence[int] = BATCH_BUCKETS) -> Any:
    """Give a :class:`~nitrogen.inference.engine.PolicyEngine` a fast path (returns the engine).

    ``compile``: :func:`compile_model` on its model (CPU or GPU). ``graphs``: a
    :class:`GraphedSampler` of the engine's step count as its ``fast_sample`` (CUDA graphs on GPU,
    eager static buffers elsewhere), under the engine's autocast. ``off``: eager everything.
    """
    if path not in ("off", "compile", "graphs"):
        raise ValueError(f"fast path must be off, compile or graphs, got {path!r}")
    uncompile_model(engine.model)
    engine.fast_sample = None
    if path == "compile":
        compile_model(engine.model)
    elif path == "graphs":
        engine.fast_sample = GraphedSampler(
            engine.model, engine.num_steps, buckets=buckets, autocast=engine.autocast_dtype
        )
    return engine
