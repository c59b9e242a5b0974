"""The papers' claims about the order of two models, checked on the runs' per-item test predictions.

``published_results.yaml: claims.<task>`` lists, per task, claims "model ``higher`` beats model
``lower``" with their source. For every claim whose two models ran, :func:`claims_markdown`
computes the difference of the task's metric (:data:`TASK_METRICS`, oriented so that a positive
difference means ``higher`` is better) and its 95 % interval from a paired bootstrap over the test
items and the seeds (:func:`pipeline.stats.paired_bootstrap`), and gives the verdict of
:func:`pipeline.stats.verdict`. A claim whose model did not run is a row saying so, with the
``dvc exp run -S`` key that adds it; claims marked ``ours`` (stated by no paper) are a table of
their own.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.stats import Interval, accuracy, kendall_tau, paired_bootstrap, verdict


@dataclass(frozen=True)
class TaskMetric:
    """A claims task's test metric on per-item predictions.

    ``value(predictions, targets)`` is in the units printed (``unit``); ``lower_is_better`` flips
    the sign for the bootstrap, so a positive difference always means the second model is better.
    """

    unit: str
    value: Callable[[Tensor, Tensor | None], float]
    digits: int = 1
    lower_is_better: bool = False

    def score(self, pred: Tensor, target: Tensor | None) -> float:
        """``value`` oriented so that higher is better."""
        v = self.value(pred, target)
        return -v if self.lower_is_better else v


def _percent_accuracy(pred: Tensor, target: Tensor | None) -> float:
    return 100 * accuracy(pred, target)


def _mean_x100(pred: Tensor, target: Tensor | None) -> float:
    """100 × the mean of per-item scores (accuracies in %, editing MSEs in units of 10⁻²)."""
    return 100 * float(pred.double().mean())


def _regression_mse_e3(pred: Tensor, target: Tensor | None) -> float:
    return 1000 * float((pred.double() - target.double()).square().mean())


# Per claims task (a key of published_results.yaml: claims), the metric of the papers' tables.
TASK_METRICS: dict[str, TaskMetric] = {
    "inr_classification": TaskMetric("test acc. (%)", _percent_accuracy),
    "inr_editing": TaskMetric("test MSE (×10⁻²)", _mean_x100, digits=2, lower_is_better=True),
    "cnn_homogeneous": TaskMetric("Kendall τ", kendall_tau, digits=3),
    "cnn_heterogeneous": TaskMetric("Kendall τ", kendall_tau, digits=3),
    "domain_adaptation": TaskMetric("target acc. (%)", _mean_x100),
    "learning_to_optimize": TaskMetric("test-task acc. (%)", _mean_x100),
    "kan_inr": TaskMetric("test acc. (%)", _percent_accuracy),
    "kan_classifier": TaskMetric("test MSE (×10⁻³)", _regression_mse_e3, digits=2, lower_is_better=True),
}

# where each claims task lists its models: the -S key that adds a model that did not run
MODEL_LISTS = {
    "inr_classification": "train.models",
    "inr_editing": "edit.models",
    "domain_adaptation": "adapt.models",
    "learning_to_optimize": "l2o.optimizers",
    "cnn_homogeneous": "cnn.train.models",
    "cnn_heterogeneous": "cnn.train.heterogeneous_models",
    "kan_inr": "kan.train.models",
    "kan_classifier": "kan.train.models",
}


@dataclass(frozen=True)
class Group:
    """One model's runs on a task: its label, its per-seed test predictions ``(N, ...)`` for the
    same ``N`` test items (``None``: the runs kept none) and the items' targets (``None`` where
    the metric needs none)."""

    label: str
    predictions: list[Tensor] | None
    targets: Tensor | None = None


def groups_from_runs(runs: list[dict], key_of: Callable[[dict], str], label_of: Callable[[dict], str]) -> dict:
    """``{published-number key: Group}`` of the runs of one task (their ``test_predictions`` and
    ``test_targets``), seeds in order."""
    out: dict[str, Group] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        key = key_of(r)
        preds = r.get("test_predictions")
        targets = torch.tensor(r["test_targets"]) if r.get("test_targets") is not None else None
        g = out.get(key) or Group(label_of(r), [], targets)
        kept = None if g.predictions is None or not preds else [*g.predictions, torch.tensor(preds)]
        out[key] = Group(g.label, kept, g.targets)
    return out


def run_hint(key: str, task: str) -> str:
    """How to run the model of published-number ``key``: ``-S 'train.models=[..., ng_gnn@no_pos]'``."""
    base, _, variant = key.partition("+")
    where = MODEL_LISTS.get(task, "train.models")
    if base == "nfn" and variant:  # NFN's variant is its mode
        return f"`-S '{where}=[..., nfn]' -S '{where.rsplit('.', 1)[0]}.nfn.mode={variant}'`"
    return f"`-S '{where}=[..., {key.replace('+', '@')}]'`"


def _pm_of(metric: TaskMetric, g: Group) -> str:
    vals = [metric.value(p, g.targets) for p in g.predictions]
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{metric.digits}f} ± {std:.{metric.digits}f}"


@dataclass(frozen=True)
class ClaimCheck:
    """A claim checked on the runs: ``text`` ("NG-T beats DWSNet"); ``verdict`` (holds /
    **fails** / inconclusive / holds (a tie), or why it was not checked); for a checked claim
    both models' metric ``values`` (mean ± std over seeds) and the ``interval`` of the improvement."""

    text: str
    verdict: str
    values: str = "–"
    interval: Interval | None = None


def check_claim(c: dict, groups: dict[str, Group], task: str, n_boot: int = 1000) -> ClaimCheck:
    """Check claim ``c`` (an entry of ``claims.<task>``) on ``groups``."""
    metric = TASK_METRICS[task]
    lo, hi = groups.get(c["lower"]), groups.get(c["higher"])
    need = float(c.get("margin", 0.0))
    verb = "matches or beats" if c.get("ties") else "beats"
    names = [g.label if g else f"`{k}`" for g, k in ((lo, c["lower"]), (hi, c["higher"]))]
    text = f"{names[1]} {verb} {names[0]}" + (f" by ≥ {need:g}" if need else "")
    if lo is None or hi is None:
        missing = [k for g, k in ((lo, c["lower"]), (hi, c["higher"])) if g is None]
        return ClaimCheck(text, "not run (" + "; ".join(f"`{k}`: {run_hint(k, task)}" for k in missing) + ")")
    if lo.predictions is None or hi.predictions is None:
        return ClaimCheck(text, "not checked: runs without per-item test predictions (rerun them)")
    targets = hi.targets if hi.targets is not None else lo.targets
    iv = paired_bootstrap(metric.score, lo.predictions, hi.predictions, targets, n_boot=n_boot)
    values = f"{_pm_of(metric, lo)} vs {_pm_of(metric, hi)}"
    return ClaimCheck(text, verdict(iv, need, bool(c.get("ties"))), values, iv)


def claim_row(c: dict, groups: dict[str, Group], task: str, n_boot: int = 1000) -> str:
    """One claim as a markdown row: both models' metric (mean ± std over seeds), the improvement
    with its bootstrap interval, the verdict and the source."""
    r = check_claim(c, groups, task, n_boot)
    d = TASK_METRICS[task].digits
    iv = f"{r.interval.diff:+.{d}f} [{r.interval.lo:+.{d}f}, {r.interval.hi:+.{d}f}]" if r.interval else "–"
    return f"| {r.text} | {r.values} | {iv} | {r.verdict} | {c['source']} |"


CAPTION = (
    "Each row: a claim about two models, both models' {unit} (mean ± std over seeds), the "
    "improvement of the second over the first{orient} with its 95 % interval from a paired "
    "bootstrap over the test items and the seeds, and the verdict: *holds* when the interval lies "
    "above 0 (or the claim's margin), **fails** when it lies below, *inconclusive* when it contains "
    "it (a tie claim fails only below 0). A claim whose models did not run says so, with the key "
    "that adds them."
)


def claims_markdown(task: str, groups: dict[str, Group], claims: list[dict], n_boot: int = 1000) -> str:
    """The claims tables of ``task``: the papers' claims, then the orderings that are ours.

    Args:
        task: a key of :data:`TASK_METRICS`.  groups: :func:`groups_from_runs` (plus baselines
            such as the unadapted nets).  claims: ``published_results.yaml: claims.<task>``.
    """
    if not claims:
        return ""
    metric = TASK_METRICS[task]
    paper = [claim_row(c, groups, task, n_boot) for c in claims if not c.get("ours")]
    ours = [claim_row(c, groups, task, n_boot) for c in claims if c.get("ours")]
    columns = [
        f"| claim | ours: {metric.unit} | improvement [95 % interval] | here | source |",
        "|---|---:|---:|---|---|",
    ]
    orient = " (lower is better: the first's value minus the second's)" if metric.lower_is_better else ""
    lines = [
        "**The papers' claims, checked on these runs.** " + CAPTION.format(unit=metric.unit, orient=orient),
        "",
        *columns,
        *paper,
        "",
    ]
    if ours:
        lines += [
            "**Orderings no paper states**, checked the same way: our own expectations, kept apart so "
            "that a reader never takes them for a paper's claim.",
            "",
            *columns,
            *ours,
            "",
        ]
    return "\n".join(lines)
