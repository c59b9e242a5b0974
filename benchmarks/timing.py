"""Timing helpers shared by the benchmark scripts (run them as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import time

import torch


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """Measured float32 GEMM FLOP/s of this machine (best of ``reps``): the baseline for utilization."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
