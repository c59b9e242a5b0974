"""Confidence intervals for comparing two models on the same test items: a paired bootstrap.

A claim "model B beats model A" is judged on the difference of a test metric, B − A, averaged
over each model's seeds. Its sampling error has two sources: the finite test set (a few hundred
items) and the seeds. :func:`paired_bootstrap` resamples both: the test items with replacement,
*the same items for both models* (paired: an item that is hard for one is hard for the other),
and each model's seeds with replacement; the 95 % interval is the percentile interval of the
resampled differences. :func:`verdict` turns the interval into *holds* / *fails* /
*inconclusive* by whether it excludes the claim's margin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Metric = Callable[[Tensor, Tensor | None], float]  # (predictions (N, ...), targets (N, ...) or None) -> a score


@dataclass(frozen=True)
class Interval:
    """The difference B − A of a metric (mean over seeds) on the whole test set, and its
    ``level`` bootstrap interval ``[lo, hi]``."""

    diff: float
    lo: float
    hi: float
    level: float = 0.95


def kendall_tau(pred: Tensor, target: Tensor) -> float:
    """Kendall's τ-b between predictions and targets ``(N,)`` (ties handled as SciPy does)."""
    from scipy.stats import kendalltau

    tau = kendalltau(pred.detach().cpu().numpy(), target.detach().cpu().numpy()).statistic
    return float(tau) if tau == tau else 0.0  # NaN (a constant input): no ordering at all


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of items whose predicted class ``pred`` ``(N,)`` equals ``target``."""
    return float((pred == target).float().mean())


def paired_bootstrap(
    metric: Metric,
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    target: Tensor | None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of ``mean_s metric(b[s]) − mean_s metric(a[s])``.

    Args:
        metric: score of predictions against targets (higher is better).
        a, b: per seed, each model's predictions for the same ``N`` test items ``(N, ...)``.
        target: ``(N, ...)`` the items' targets; ``None`` where the predictions are scores of
            their own (per-item losses or accuracies), passed on to ``metric`` as ``None``.
        n_boot: resamples; each draws ``N`` items with replacement (the same for ``a`` and
            ``b``) and each model's seeds with replacement.
    """
    n = target.shape[0] if target is not None else (a[0].shape[0] if a else 0)
    if any(p.shape[0] != n for p in (*a, *b)) or not a or not b:
        raise ValueError("every model and seed needs a prediction for each of the same test items")

    def diff(items: Tensor, sa: Tensor, sb: Tensor) -> float:
        t = target[items] if target is not None else None
        score_b = sum(metric(b[int(s)][items], t) for s in sb) / len(sb)
        score_a = sum(metric(a[int(s)][items], t) for s in sa) / len(sa)
        return score_b - score_a

    g = torch.Generator().manual_seed(seed)
    whole = diff(torch.arange(n), torch.arange(len(a)), torch.arange(len(b)))
    draws = torch.tensor(
        [
            diff(
                torch.randint(n, (n,), generator=g),
                torch.randint(len(a), (len(a),), generator=g),
                torch.randint(len(b), (len(b),), generator=g),
            )
            for _ in range(n_boot)
        ],
        dtype=torch.float64,
    )
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(draws, q).tolist()
    return Interval(whole, lo, hi, level)


def verdict(iv: Interval, margin: float = 0.0, ties: bool = False) -> str:
    """A claim that B beats A by ``margin``: *holds* if the interval lies above the margin,
    **fails** if it lies below, *inconclusive* if it contains it. A tie claim (``ties``: B at
    least matches A) fails only if the interval lies below 0, and is *holds (a tie)* otherwise."""
    if ties:
        return "**fails**" if iv.hi < 0 else "holds (a tie)" if iv.lo <= 0 else "holds"
    if iv.lo > margin:
        return "holds"
    return "**fails**" if iv.hi < margin else "inconclusive"
