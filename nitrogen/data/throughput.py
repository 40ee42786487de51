"""Throughput of the data pipeline alone: a DataLoader loop, no model."""

from __future__ import annotations

import time

import torch

from nitrogen.data.dataset import collate


def measure_throughput(
    dataset: torch.utils.data.Dataset,
    batch_size: int = 8,
    num_workers: int = 0,
    batches: int = 20,
    *,
    warmup: int | None = None,
    seed: int = 0,
) -> float:
    """Samples per second delivered by a shuffled ``DataLoader`` over ``dataset``.

    The first ``warmup`` batches (default: one per worker, at least one) are not timed, so worker
    start-up is excluded; then ``batches`` batches are timed. The loader is restarted (a new epoch)
    when the dataset is smaller than the requested number of batches.
    """
    if batches <= 0 or batch_size <= 0:
        raise ValueError("batch_size and batches must be positive")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty")
    warmup = max(1, num_workers) if warmup is None else warmup
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    seen, samples, start = 0, 0, time.perf_counter()
    while seen < warmup + batches:
        for batch in loader:
            seen += 1
            if seen <= warmup:  # not timed; the clock starts once the last warm-up batch is in
                start = time.perf_counter()
                continue
            samples += int(batch["actions"].shape[0])
            if seen >= warmup + batches:
                break
    return samples / (time.perf_counter() - start)
