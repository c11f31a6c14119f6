"""The benchmarks' one timer: the best of a few wall-clock runs.

The minimum is the run least disturbed by the rest of the machine; CUDA work is waited for before
the clock stops, so asynchronous kernels are counted.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch


def sync(device: Optional[torch.device]) -> None:
    """Wait for the work queued on ``device`` (CUDA only; the CPU computes synchronously)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], repeats: int = 3, device: Optional[torch.device] = None,
            warmup: bool = True) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (after one untimed warm-up call when
    ``warmup``: allocations, kernel selection)."""
    if warmup:
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best
