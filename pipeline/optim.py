"""Adam for many nets at once: every net's parameters are one row of a flat ``(B, P)`` buffer,
and one update moves them all (the zoo fitters, the adaptation fine-tuning, the learning-to-optimize
baseline). Two forms, each the arithmetic of ``torch.optim.Adam``: :func:`adam_update` with a
learning rate (and optional L2 decay) per net, :func:`adam_update_one_lr` with one learning rate
for the batch (the SIREN fitter; its float operations differ, so each keeps its own bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class AdamSettings:
    """Full-batch Adam (``torch.optim.Adam`` arithmetic) with per-net lr and L2 weight decay."""

    steps: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def adam_update(
    flat: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: int,
    lr: Tensor,
    settings: AdamSettings,
    weight_decay: Tensor | None = None,
) -> None:
    """One Adam update of ``flat`` in place, per-net lr ``(B,)`` and L2 ``weight_decay`` ``(B, 1)``.

    ``grad`` ``(B, D)`` is modified when ``weight_decay`` is given. Nothing is read back to the
    host, so a step on a GPU queues without waiting.
    """
    B = flat.shape[0]
    b1, b2 = settings.betas
    if weight_decay is not None:
        grad = grad.addcmul_(weight_decay, flat)
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = v.sqrt().div_(math.sqrt(1 - b2**step)).add_(settings.eps)
    flat.sub_(m / denom * (lr / (1 - b1**step)).view(B, 1))


def adam_update_one_lr(
    theta: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: int, lr: float, betas: tuple[float, float], eps: float
) -> None:
    """One Adam update of ``theta`` in place with one learning rate, the arithmetic of
    ``torch.optim.Adam(foreach=False)``.

    Shapes: every tensor ``(B, P)``; ``step`` counts from 1.
    """
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2**step)).add_(eps)
    theta.addcdiv_(m, denom, value=-lr / (1 - b1**step))
