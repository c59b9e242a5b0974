"""The WS-KAN tasks: KAN-INR classification, KAN accuracy prediction, the expressivity check."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pipeline.io import read_json
from pipeline.models import model_label
from pipeline.report.common import (
    models_in_order,
    pm,
    published,
    published_results,
    reference_summary,
    save_figure,
    summarize_metrics,
    task_claims,
)
from pipeline.report.section import Section, metrics_of

KEY = "kan"  # the report stage's option --kan: the KAN stages' folders (``inr``, ``classifier``, ``inr_forward``)
INPUT = "data/kan"  # its default
ORDER = 20  # the section's place among the task sections


KAN_TASK_TITLES = {
    "inr": "(a) KAN-INR classification (digit of the image a KAN-INR encodes)",
    "classifier": "(b) Accuracy prediction of KAN classifiers (target: the classifier's test accuracy)",
    "inr_forward": "(c) Expressivity check: predict a held-out KAN-INR's output at a query point "
    "(R² 0 = predicting the mean)",
}


def kan_markdown(
    summaries: dict[str, dict], zoos: dict[str, dict], counts: dict[str, dict], n_seeds: int, reference: dict
) -> str:
    """The KAN section of ``results.md``: one table per task, published WS-KAN numbers beside.

    ``reference``: :func:`reference_summary` of the expressivity check's position-only predictor.
    """
    inr, cls = zoos["inr"], zoos["classifier"]
    lines = [
        "## KANs: WS-KAN vs baselines",
        "",
        f"KAN-INR zoo: {inr['n_nets']} KANs {inr['spec']} (mean PSNR {inr['psnr_mean']:.1f} ± "
        f"{inr['psnr_std']:.1f} dB, min {inr['psnr_min']:.1f}). "
        f"KAN classifier zoo: {cls['n_nets']} KANs {cls['spec']}, test accuracies "
        f"{100 * cls['test_acc_mean']:.1f} ± {100 * cls['test_acc_std']:.1f} % (range {100 * cls['test_acc_min']:.1f}"
        f'-{100 * cls["test_acc_max"]:.1f} %). Settings and reasons: `docs/methods.md`, "KAN zoo".',
        f"Test metrics at the best validation epoch, mean ± std over {n_seeds} seeds; KANs per split: "
        + "; ".join(f"{t}: {c}" for t, c in counts.items())
        + ".",
        "",
    ]
    for task, summary in summaries.items():
        pub = published_results().get(f"kan_{task}", {})
        lines += [f"### {KAN_TASK_TITLES[task]}", ""]
        if task == "inr":
            lines += ["| model | parameters | test acc. (%) | s / epoch | published WS-KAN* |"]
            lines += ["|---|---:|---:|---:|---:|"]
            for m, s in summary.items():
                lines.append(
                    f"| {s['label']} | {s['n_params']:,} | {pm(s, 'acc', 100)} | {s['seconds_per_epoch']:.1f} "
                    f"| {published(f'kan_{task}', m)} |"
                )
        else:
            tau = "tau_mean" in next(iter(summary.values()))
            head = "| model | parameters |" + (" Kendall τ |" if tau else "") + " R² | test MSE | s / epoch |"
            head += " published WS-KAN* |" if task == "classifier" else ""
            lines += [head, "|---|---:|" + ("---:|" if tau else "") + "---:|---:|---:|" + ("---:|" if pub else "")]
            for m, s in summary.items():
                row = f"| {s['label']} | {s['n_params']:,} |"
                row += f" {pm(s, 'tau', 1, 3)} |" if tau else ""
                row += f" {pm(s, 'r2', 1, 3)} | {s['mse_mean']:.2e} ± {s['mse_std']:.1e} |"
                row += f" {s['seconds_per_epoch']:.1f} |"
                row += f" {published(f'kan_{task}', m)} |" if pub else ""
                lines.append(row)
            if task == "inr_forward":
                lines += [
                    "",
                    "Reference that ignores the KAN: the mean output of the training KANs at the query point "
                    f"(the best predictor of the position alone), test R² {pm(reference, 'test_r2', 1, 3)}. A model "
                    "near it has not learned to run the input KAN. Fresh (KAN, point) pairs every step; an "
                    "epoch of the curves is one validation evaluation.",
                ]
        lines.append("")
    lines += [
        "\\* WS-KAN's published numbers are quoted second-hand from zoos that were never released: a "
        "**different data set**, shown for orientation only.",
        "",
        "![KAN learning curves](figures/kan_learning_curves.png)",
        "",
    ]
    return "\n".join(lines)


def plot_kan_curves(task_runs: dict[str, list[dict]], path: str | Path) -> None:
    """Validation metric per epoch for every KAN task and model; mean ± std band over seeds."""
    fig, axes = plt.subplots(1, len(task_runs), figsize=(4.2 * len(task_runs), 3.6), squeeze=False)
    for ax, (task, runs) in zip(axes[0], task_runs.items(), strict=True):
        sel = runs[0]["select"]
        for model in models_in_order(runs):
            rs = [r for r in runs if r["model"] == model]
            epochs = torch.tensor([h["epoch"] for h in rs[0]["history"]])
            vals = torch.tensor([[h[f"val_{sel}"] for h in r["history"]] for r in rs])
            m, s = vals.mean(0), vals.std(0) if len(rs) > 1 else torch.zeros(len(epochs))
            ax.plot(epochs, m, label=model_label(model, rs[0]["config"]))
            ax.fill_between(epochs, m - s, m + s, alpha=0.2)
        ax.set(xlabel="epoch", ylabel=f"validation {sel}", title=f"KAN task: {task}")
        if sel == "r2":
            ax.set_ylim(bottom=max(-0.2, float(ax.get_ylim()[0])))
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


KAN_TASKS = ("inr", "classifier", "inr_forward")


def section(kan_dir: Path, params, figures: Path) -> Section | None:
    """KAN tables, claims, metrics and learning curves, if every KAN task has been trained."""
    if not all((kan_dir / t / "train" / "results.json").exists() for t in KAN_TASKS):
        return None
    task_runs = {t: read_json(kan_dir / t / "train" / "results.json")["runs"] for t in KAN_TASKS}
    summaries = {t: summarize_metrics(runs) for t, runs in task_runs.items()}
    zoos, counts = {}, {}
    for t in ("inr", "classifier"):
        info = read_json(kan_dir / t / "zoo" / "zoo.json")
        sizes = "-".join(str(n) for n in info["spec"]["layer_sizes"])
        fit = info["recipe"]["spec"]["tensors"]
        n_coef, n_knots = fit[0]["shape"][-1], fit[3]["shape"][-1]
        k = n_knots - n_coef - 1
        zoos[t] = info["summary"] | {"spec": f"{sizes} (G={n_coef - k}, k={k})"}
    for t in ("inr", "classifier"):
        counts[t] = read_json(kan_dir / t / "graphs" / "meta.json")["counts"]
    counts["inr_forward"] = task_runs["inr_forward"][0]["counts"]  # KANs; the query points are drawn per step
    plot_kan_curves(task_runs, figures / "kan_learning_curves.png")
    reference = reference_summary(task_runs["inr_forward"])
    metrics = {f"kan_{t}": metrics_of(summary) for t, summary in summaries.items()}
    metrics["kan_inr_forward_position_only_reference"] = reference
    md = kan_markdown(summaries, zoos, counts, len(params.kan.train.seeds), reference)
    md += "".join(
        f"\n### Claims: {KAN_TASK_TITLES[t]}\n\n" + task_claims(f"kan_{t}", task_runs[t]) for t in ("inr", "classifier")
    )
    return Section(md, metrics, ("kan_learning_curves.png",))
