"""Deterministic, resumable data order and per-sample flow noise.

The order is a fresh permutation of the dataset per epoch, drawn from ``(seed, epoch)``. A *global
micro batch* is ``batch_size * num_replicas`` consecutive indices of it (the tail that does not
fill one is dropped); rank ``r`` takes slice ``r`` of it. A position in the stream is
``(epoch, batch)``, so a resumed run continues at exactly the next batch, and the global batches are
the same whatever the number of processes, as long as ``batch_size * num_replicas`` is.

The flow-matching noise and time of a sample are drawn from ``(seed, epoch, dataset index)``, not
from a process's RNG: a 2-process run sees the same noise as a 1-process one, and a resumed run the
same as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler


@dataclass
class DataPosition:
    """Where the stream stands: the next micro batch is batch ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0

    def advance(self, batches_per_epoch: int) -> None:
        self.batch += 1
        if self.batch >= batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class ResumableBatchSampler(Sampler[list[int]]):
    """An endless batch sampler over epochs for one rank, starting at a :class:`DataPosition`."""

    def __init__(
        self, n: int, batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0, start: DataPosition
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.global_batch = batch_size * num_replicas
        self.batches_per_epoch = n // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {n} samples is smaller than one global batch of {self.global_batch}")
        self.start = DataPosition(start.epoch, start.batch)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batch = self.start.epoch, self.start.batch
        while True:
            perm = epoch_permutation(self.n, self.seed, epoch)
            for b in range(batch, self.batches_per_epoch):
                lo = b * self.global_batch + self.rank * self.batch_size
                yield perm[lo : lo + self.batch_size].tolist()
            epoch, batch = epoch + 1, 0


def sample_noise_and_time(
    indices: torch.Tensor,
    shape: tuple[int, int],
    *,
    seed: int,
    epoch: int,
    alpha: float,
    beta: float,
    s: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample noise ``(B, H, A)`` and flow time ``(B,)``: ``t = (1 - Beta(alpha, beta)) * s``.

    Each sample's draws depend only on ``(seed, epoch, its dataset index)``.
    """
    noises, times = [], []
    for idx in indices.tolist():
        key = [seed, epoch, int(idx)]
        g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        noises.append(torch.randn(shape, generator=g))
        times.append((1 - np.random.default_rng(key).beta(alpha, beta)) * s)
    return torch.stack(noises), torch.tensor(times, dtype=torch.float32)


def eval_noise(indices: torch.Tensor, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Fixed sampler noise ``(B, H, A)`` per eval sample, from ``(seed, index)``."""
    out = []
    for idx in indices.tolist():
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, int(idx)]).generate_state(1)[0]))
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out)
