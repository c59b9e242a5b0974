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
