"""Learning to optimize: learned optimizers against Adam and SGD."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pipeline.io import read_json
from pipeline.report.common import mean_std, pm, published, published_results, save_figure
from pipeline.report.section import Section, metrics_of
from pipeline.tasks.l2o import OPTIMIZER_LABELS

KEY = "l2o"  # the report stage's option --l2o: the learning-to-optimize runs
INPUT = "data/l2o"  # its default
ORDER = 50  # the section's place among the task sections


L2O_TASKS = ("meta_task", "test_task")


def summarize_l2o(runs: list[dict]) -> dict[str, dict]:
    """``{optimizer: {<task>_{loss,acc}_{mean,std}, lrs, n_params, wall_seconds, label, key,
    published}}`` over seeds (a seed's number is the mean over its evaluation nets), in
    :data:`OPTIMIZER_LABELS` order."""
    out: dict[str, dict] = {}
    for name in [n for n in OPTIMIZER_LABELS if any(r["model"] == n for r in runs)]:
        rs = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        row: dict = {}
        for key in rs[0]["test"]:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r["test"][key] for r in rs])
        row |= {
            "n_seeds": len(rs),
            "n_params": rs[0]["n_params"],
            "wall_seconds": statistics.fmean(r["wall_seconds"] for r in rs),
            "lrs": sorted({r["lr"] for r in rs if r.get("lr") is not None}),
            "label": OPTIMIZER_LABELS[name],
            "key": name,
            "published": published("learning_to_optimize", name),
        }
        out[name] = row
    return out


def l2o_claims(runs: list[dict], n_boot: int = 1000) -> str:
    """The learning-to-optimize claims on the test task: per optimizer and seed, the test accuracy
    of each evaluation net (the same initializations for every optimizer of a seed)."""
    from pipeline.claims import Group, claims_markdown

    groups = {}
    for name, label in OPTIMIZER_LABELS.items():
        rs = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        if rs:
            groups[name] = Group(label, [torch.tensor(r["per_net"]["test_task"]["test_acc"]) for r in rs])
    claims = published_results().get("claims", {}).get("learning_to_optimize", [])
    return claims_markdown("learning_to_optimize", groups, claims, n_boot)


def l2o_markdown(summary: dict, tasks: dict[str, str], settings: dict, claims: str = "") -> str:
    """The learning-to-optimize section of ``results.md``: final training loss and test accuracy
    of fresh nets trained by every optimizer on the meta-training task and on the test task, the
    published numbers beside (a different data set) and the paper's claims checked.

    Args:
        summary: :func:`summarize_l2o`.  tasks: ``{meta_task | test_task: description}``
        (:attr:`pipeline.tasks.l2o.Task.label`).  settings: the runs' schedule (``L2OSettings`` as a dict).
        claims: :func:`l2o_claims`.
    """
    m = settings["meta"]
    n_seeds = max(s["n_seeds"] for s in summary.values())
    lines = [
        "## Learning to optimize: a small-budget check",
        "",
        "CNN optimizees as the paper's, at about 1 % of its meta-training (the paper: up to 1 000 outer steps "
        "of 100-step unrolls, 1 000-step evaluations, 5 seeds) and on smaller images: the orderings below say "
        "how the learned optimizers compare at this budget, not whether the paper's result holds.",
        "",
        f"Learned optimizers are meta-trained on the meta task ({tasks['meta_task']}) with "
        f"{m['outer_steps']} outer steps of {m['unroll']}-step truncated unrolls ({m['n_optimizees']} nets each, "
        f"re-drawn every {m['horizon']} steps, first-order meta-gradients); Adam and SGD with momentum get "
        "the learning rate of their grid with the lowest final training loss on the meta task (other nets "
        f"than the evaluation ones). Then every optimizer trains {settings['eval_nets']} fresh nets per task and "
        f"seed for {settings['eval_steps']} steps, on the meta task and on the test task ({tasks['test_task']}): "
        "a wider net on other data, never seen in meta-training. Final training loss (mean of the last 10 "
        "steps) and held-out test accuracy, mean ± std over "
        f"{n_seeds} seeds (a seed's number: the mean over its nets). The learned optimizers are taken after "
        'their last outer step (no selection). Settings and reasons: `docs/tasks.md`, "Learning to optimize".',
        "",
        "| optimizer | parameters | lr | meta task: train loss | meta task: test acc. (%) | test task: train loss "
        "| test task: test acc. (%) | s / run | published, F-MNIST / CIFAR-10 (%)* |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary.values():
        lr = ", ".join(f"{v:g}" for v in s["lrs"]) if s["lrs"] else "–"
        n_params = f"{s['n_params']:,}" if s["n_params"] else "–"  # a baseline has none
        lines.append(
            f"| {s['label']} | {n_params} | {lr} | {pm(s, 'meta_task_loss', 1, 3)} "
            f"| {pm(s, 'meta_task_acc', 100)} | {pm(s, 'test_task_loss', 1, 3)} | {pm(s, 'test_task_acc', 100)} "
            f"| {s['wall_seconds']:.0f} | {s['published']} |"
        )
    lines += [
        "",
        "\\* Neural Graphs §4.3: CNN optimizees meta-trained on FashionMNIST (validation accuracy) and tested on "
        "CIFAR-10 with a bigger CNN, 1 000-step evaluations: a **different data set and schedule**. For "
        "orientation only.",
        "",
    ]
    lines += [claims, "![training loss per step](figures/l2o_curves.png)", ""]
    return "\n".join(lines)


def plot_l2o(runs: list[dict], path: str | Path) -> None:
    """Training loss per step of the evaluation nets on both tasks (mean over seeds, log scale),
    one line per optimizer."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, task in zip(axes, L2O_TASKS, strict=True):
        for name, label in OPTIMIZER_LABELS.items():
            rs = [r for r in runs if r["model"] == name]
            if rs:
                curve = torch.tensor([r["curves"][task] for r in rs]).mean(0)
                ax.plot(range(1, len(curve) + 1), curve, lw=1.2, label=label)
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title=task.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def section(l2o_dir: Path, params, figures: Path) -> Section | None:
    """The learning-to-optimize table, claims, metrics and figure, if the ``l2o`` stage has run."""
    if not (l2o_dir / "results.json").exists():
        return None
    runs = read_json(l2o_dir / "results.json")["runs"]
    summary = summarize_l2o(runs)
    plot_l2o(runs, figures / "l2o_curves.png")
    md = l2o_markdown(summary, runs[0]["tasks"], runs[0]["settings"], l2o_claims(runs))
    return Section(md, {"learning_to_optimize": metrics_of(summary)}, ("l2o_curves.png",))
