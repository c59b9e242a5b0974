"""The paired bootstrap behind the claims' verdicts, on synthetic predictions with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.stats import Interval, accuracy, kendall_tau, paired_bootstrap, verdict


def _classifier(target: torch.Tensor, p_correct: float, g: torch.Generator) -> torch.Tensor:
    """Predicted classes that are right with probability ``p_correct``, item by item."""
    right = torch.rand(target.shape, generator=g) < p_correct
    return torch.where(right, target, (target + 1) % 10)


def test_identical_models_give_a_zero_interval_and_no_verdict():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(10, (200,), generator=g)
    pred = [_classifier(target, 0.7, g) for _ in range(3)]
    iv = paired_bootstrap(accuracy, pred, pred, target, n_boot=200)
    assert iv.diff == 0 and iv.lo <= 0 <= iv.hi
    assert verdict(iv) == "inconclusive"


def test_the_interval_covers_a_known_difference_at_its_level_with_the_expected_width():
    """Two classifiers right with probability 0.7 and 0.8 on independent items: the difference
    of accuracies is 0.1 and its standard error sqrt((0.7·0.3 + 0.8·0.2) / N)."""
    n, trials, covered, widths = 500, 40, 0, []
    for t in range(trials):
        g = torch.Generator().manual_seed(100 + t)
        target = torch.randint(10, (n,), generator=g)
        a, b = [_classifier(target, 0.7, g)], [_classifier(target, 0.8, g)]
        iv = paired_bootstrap(accuracy, a, b, target, n_boot=400, seed=t)
        covered += iv.lo <= 0.1 <= iv.hi
        widths.append(iv.hi - iv.lo)
    expected = 2 * 1.96 * math.sqrt((0.7 * 0.3 + 0.8 * 0.2) / n)
    assert covered >= 33, f"95 % intervals covered the truth in {covered}/{trials} trials"
    assert abs(sum(widths) / trials - expected) < 0.2 * expected


def test_pairing_makes_a_shared_hard_item_cancel():
    """Both models wrong on the same items: the paired interval of the difference is narrow."""
    g = torch.Generator().manual_seed(1)
    target = torch.randint(10, (400,), generator=g)
    hard = torch.rand(400, generator=g) < 0.5
    a = [torch.where(hard, (target + 1) % 10, target)]
    b = [torch.where(hard & (torch.arange(400) % 10 != 0), (target + 1) % 10, target)]  # fixes 1 in 10 hard
    iv = paired_bootstrap(accuracy, a, b, target, n_boot=300)
    assert 0 < iv.lo and iv.hi - iv.lo < 0.06  # paired about 0.043; unpaired it would be about 0.14
    assert verdict(iv) == "holds"


def test_seed_spread_widens_the_interval():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(10, (400,), generator=g)
    steady = [_classifier(target, 0.75, torch.Generator().manual_seed(9))] * 3
    swinging = [_classifier(target, p, g) for p in (0.55, 0.75, 0.95)]
    base = [_classifier(target, 0.75, g)]
    narrow = paired_bootstrap(accuracy, base, steady, target, n_boot=300)
    wide = paired_bootstrap(accuracy, base, swinging, target, n_boot=300)
    assert wide.hi - wide.lo > 2 * (narrow.hi - narrow.lo)


def test_kendall_tau_claims_hold_and_fail_on_clear_cases():
    g = torch.Generator().manual_seed(3)
    target = torch.rand(300, generator=g)
    good = [target + 0.05 * torch.randn(300, generator=g) for _ in range(2)]
    noise = [torch.rand(300, generator=g) for _ in range(2)]
    assert kendall_tau(target, target) == pytest.approx(1.0)
    up = paired_bootstrap(kendall_tau, noise, good, target, n_boot=200)
    assert up.lo > 0.5 and verdict(up) == "holds"
    down = paired_bootstrap(kendall_tau, good, noise, target, n_boot=200)
    assert down.hi < -0.5 and verdict(down) == "**fails**" and verdict(down, ties=True) == "**fails**"


@pytest.mark.parametrize(
    "iv,margin,ties,expected",
    [
        (Interval(0.05, 0.01, 0.09), 0.0, False, "holds"),
        (Interval(0.05, 0.01, 0.09), 0.02, False, "inconclusive"),
        (Interval(-0.05, -0.09, -0.01), 0.0, False, "**fails**"),
        (Interval(0.0, -0.02, 0.02), 0.0, False, "inconclusive"),
        (Interval(0.0, -0.02, 0.02), 0.0, True, "holds (a tie)"),
        (Interval(0.05, 0.01, 0.09), 0.0, True, "holds"),
        (Interval(-0.05, -0.09, -0.01), 0.0, True, "**fails**"),
    ],
)
def test_verdicts(iv: Interval, margin: float, ties: bool, expected: str):
    assert verdict(iv, margin, ties) == expected


def test_predictions_for_other_items_are_refused():
    target = torch.zeros(5)
    with pytest.raises(ValueError, match="same test items"):
        paired_bootstrap(accuracy, [torch.zeros(5)], [torch.zeros(4)], target)
