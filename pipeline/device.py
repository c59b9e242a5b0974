"""Which torch device a piece of work runs on (``params.yaml: ray.device``).

Inside a Ray task, Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned (none for a task
that reserves ``num_gpus=0``), so ``auto`` means "the GPU Ray gave this task, else the CPU".
Library functions take a ``device`` argument and never pick one themselves; tests pass the
``meta`` device, which needs no GPU but fails on any tensor created on a fixed device and on any
host synchronisation (``.item()``, ``.tolist()``), as a GPU run would silently pay for.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` if this process sees a GPU, else ``cpu``; ``cuda`` fails without one.

    Any other torch device string (``meta``, ``cuda:1``) is returned as is.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "ray.device: cuda, but this process sees no GPU (is ray.gpus_per_task > 0, and does the node have one?)"
        )
    return torch.device(name)


def describe(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)`` for logs and MLflow tags."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def from_host(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t``, drawn on the host (an epoch's order, a block of per-net draws), on ``device``.

    To a GPU the copy goes from page-locked memory without blocking the host, so the host draws
    the next block while the copy runs (the caching host allocator keeps the pinned buffer until
    the copy is done). Elsewhere a plain ``t.to(device)``: the same tensor on the CPU.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def cap_gpu_memory(share: float) -> bool:
    """Hold this process to ``share`` of its GPU's memory when it holds a fraction ``0 < share < 1``
    of the GPU (Ray's ``num_gpus``): tasks sharing a GPU are separate CUDA contexts, and without a
    cap the first to grow takes the memory of the others, which then fail at random. Past the cap
    an allocation raises ``torch.OutOfMemoryError`` in the task that made it (with the advice of
    :data:`pipeline.distributed.OUT_OF_MEMORY_ADVICE`). Returns whether a cap was set."""
    if 0 < share < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share)
        return True
    return False
