"""Generalization: predicting CNN classifiers' test accuracy, one table per zoo family."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pipeline.io import read_json
from pipeline.models import model_label, variant_key
from pipeline.report.common import (
    models_in_order,
    pm,
    published_results,
    save_figure,
    summarize_metrics,
    task_claims,
)
from pipeline.report.section import Section, metrics_of

KEY = "cnn"  # the report stage's option --cnn: the CNN zoo families' folders
INPUT = "data/cnn"  # its default
ORDER = 30  # the section's place among the task sections


CNN_FAMILY_TITLES = {
    "homogeneous": "Homogeneous zoo (Small CNN Zoo style: one architecture)",
    "heterogeneous": "Heterogeneous zoo (CNN Wild Park style: many architectures)",
}


def cnn_markdown(
    summaries: dict[str, dict],
    zoos: dict[str, dict],
    counts: dict[str, dict],
    n_seeds: int,
    family_runs: dict[str, list[dict]] | None = None,
) -> str:
    """The generalization section of ``results.md``: per CNN zoo family, Kendall τ and R² of every
    model's predicted vs true test accuracy, published τ beside (a different data set), and the
    papers' claims checked on ``family_runs`` (:func:`task_claims`)."""
    lines = [
        "## Generalization: predicting a CNN's test accuracy from its weights",
        "",
        "Each net of a CNN zoo is one checkpoint of a training run of a classifier of the offline MNIST "
        "digits (14x14); the target is its accuracy on held-out digits no CNN trains on. Hyper-parameters "
        "are drawn per run (learning rate, weight decay, initialization scale, dropout, label noise, "
        'fraction of the digits, steps); splits are by run. Settings and reasons: `docs/tasks.md`, "CNN zoos". '
        f"Test metrics at the best validation epoch (selected on R²), mean ± std over {n_seeds} seeds.",
        "",
    ]
    for family, summary in summaries.items():
        z, c = zoos[family], counts[family]
        pub = published_results().get(f"cnn_{family}", {})
        lines += [
            f"### {CNN_FAMILY_TITLES[family]}",
            "",
            f"{z['n_nets']} CNNs ({z['n_runs']} runs × {z['n_nets'] // max(z['n_runs'], 1)} checkpoints, "
            f"{z['n_architectures']} architecture{'s' if z['n_architectures'] > 1 else ''}); true test accuracies "
            f"{100 * z['test_acc_mean']:.1f} ± {100 * z['test_acc_std']:.1f} % (range {100 * z['test_acc_min']:.1f}"
            f"-{100 * z['test_acc_max']:.1f} %); graphs per split: {c}.",
            "",
            "| model | parameters | Kendall τ | R² | s / epoch | published τ* |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in summary.values():
            key = s["key"]
            lines.append(
                f"| {s['label']} | {s['n_params']:,} | {pm(s, 'tau', 1, 3)} | {pm(s, 'r2', 1, 3)} "
                f"| {s['seconds_per_epoch']:.1f} | {pub[key]['value'] if key in pub else '–'} |"
            )
        lines.append("")
        if family_runs is not None:
            lines.append(task_claims(f"cnn_{family}", family_runs[family]))
    lines += [
        "\\* Published τ: Neural Graphs (StatNN, NG-GNN, NG-T) and NFN on the Small CNN Zoo's CIFAR10-GS "
        "(homogeneous) and the CNN Wild Park (heterogeneous): **different data sets** (CIFAR-10 CNNs, far "
        "larger zoos), shown for orientation only.",
        "",
        "![predicted vs true accuracy](figures/cnn_scatter.png)",
        "",
    ]
    return "\n".join(lines)


def summarize_cnn(runs: list[dict]) -> dict[str, dict]:
    """:func:`summarize_metrics` of one CNN family's runs, with each model's published-number key."""
    out = summarize_metrics(runs)
    for model, row in out.items():
        row["key"] = variant_key(model, next(r["config"] for r in runs if r["model"] == model))
    return out


def plot_cnn_scatter(family_runs: dict[str, list[dict]], path: str | Path) -> None:
    """Predicted vs true test accuracy of the test CNNs, one panel per (family, model), first seed."""
    n_cols = max(len(models_in_order(runs)) for runs in family_runs.values())
    fig, axes = plt.subplots(len(family_runs), n_cols, figsize=(2.6 * n_cols, 2.7 * len(family_runs)), squeeze=False)
    for row, (family, runs) in zip(axes, family_runs.items(), strict=True):
        models = models_in_order(runs)
        for ax, model in zip(row, models, strict=False):
            r = min((r for r in runs if r["model"] == model), key=lambda r: r["seed"])
            true = torch.tensor(r["test_targets"]) * 100
            pred = torch.tensor(r["test_predictions"]) * 100
            ax.scatter(true, pred, s=4, alpha=0.5)
            ax.plot([0, 100], [0, 100], color="grey", lw=0.8)
            ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="true acc. (%)")
            ax.set_title(f"{model_label(model, r['config'])}\nτ {r['test']['tau']:.3f} (seed {r['seed']})", fontsize=8)
        row[0].set_ylabel(f"{family} zoo\npredicted acc. (%)")
        for ax in row[len(models) :]:
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


CNN_FAMILIES = ("homogeneous", "heterogeneous")


def section(cnn_dir: Path, params, figures: Path) -> Section | None:
    """The generalization section (CNN accuracy prediction), if every CNN family has been trained."""
    if not all((cnn_dir / f / "train" / "results.json").exists() for f in CNN_FAMILIES):
        return None
    family_runs = {f: read_json(cnn_dir / f / "train" / "results.json")["runs"] for f in CNN_FAMILIES}
    summaries = {f: summarize_cnn(runs) for f, runs in family_runs.items()}
    zoos = {f: read_json(cnn_dir / f / "zoo" / "zoo.json")["summary"] for f in CNN_FAMILIES}
    counts = {f: read_json(cnn_dir / f / "graphs" / "meta.json")["counts"] for f in CNN_FAMILIES}
    plot_cnn_scatter(family_runs, figures / "cnn_scatter.png")
    metrics = {f"cnn_{f}": metrics_of(summary) for f, summary in summaries.items()}
    md = cnn_markdown(summaries, zoos, counts, len(params.cnn.train.seeds), family_runs)
    return Section(md, metrics, ("cnn_scatter.png",))
