"""INR classification: the main table, learning curves and reconstructions."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from pipeline.data import coordinate_grid, load_images
from pipeline.graphs.store import data_version
from pipeline.io import read_json, write_text
from pipeline.models import model_label
from pipeline.report.common import curves, models_in_order, save_figure, summarize, task_claims
from pipeline.report.reference import reference_markdown
from pipeline.report.regime import regime_markdown
from pipeline.report.section import Section, metrics_of
from pipeline.zoo.siren import output_offset, siren_forward
from pipeline.zoo.store import load_zoo


def results_markdown(summary: dict, zoo_summary: dict, graph_counts: dict, profile: str, n_seeds: int) -> str:
    """The report a researcher pastes into a paper: ours beside the published numbers."""
    lines = [
        "# metazoo results",
        "",
        f"Profile: `{profile}`. Task: INR classification (10 digits), SIRENs of the offline MNIST subset.",
        f"Zoo: {zoo_summary['n_nets']} INRs, mean PSNR {zoo_summary['psnr_mean']:.2f} dB "
        f"(min {zoo_summary['psnr_min']:.2f} dB); {zoo_summary['n_diverged']} diverged INRs excluded. "
        f"Graphs per split: {graph_counts}.",
        f"Test accuracy at the best validation epoch, mean ± std over {n_seeds} seeds.",
        "",
        "| model | settings | parameters | test acc. (%) | best val. acc. (%) | best epoch | s / epoch "
        "| published, MNIST INRs (%)* |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary.values():
        lines.append(
            f"| {s['label']} | {s['settings']} | {s['n_params']:,} | {100 * s['test_acc_mean']:.1f} ± "
            f"{100 * s['test_acc_std']:.1f} | {100 * s['val_acc_mean']:.1f} ± {100 * s['val_acc_std']:.1f} | "
            f"{s['best_epoch_mean']:.1f} / {s['epochs']} | {s['seconds_per_epoch']:.1f} | {s['published']} |"
        )
    lines += [
        "",
        "\\* Published numbers are from a **different data set**: the published 55k-INR MNIST zoo, "
        "trained for far more steps on GPUs (the DWSNets trainer: 100 epochs at batch 512), with the "
        "published model sizes (DWSNets; NFN; Neural Graphs, Tables 3-4). The published MLP trains "
        "without augmentation (its + permutation row: permutations only); ours as its settings column "
        "says (`train.mlp.augment`). They are shown for orientation, "
        "not as the same experiment.",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "![INR reconstructions](figures/reconstructions.png)",
        "",
    ]
    return "\n".join(lines)


def plot_learning_curves(runs: list[dict], path: str | Path) -> None:
    """Validation accuracy and training loss per epoch; mean ± std band over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for model in models_in_order(runs):
        rs = [r for r in runs if r["model"] == model]
        epochs = torch.tensor([h["epoch"] for h in rs[0]["history"]])
        for ax, key in zip(axes, ("val_acc", "train_loss"), strict=True):
            vals = torch.tensor([[h[key] for h in r["history"]] for r in rs])
            m, s = vals.mean(0), vals.std(0) if len(rs) > 1 else torch.zeros(len(epochs))
            ax.plot(epochs, m, label=model_label(model, rs[0]["config"]))
            ax.fill_between(epochs, m - s, m + s, alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="INR classification")
    axes[1].set(xlabel="epoch", ylabel="training cross-entropy")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_reconstructions(
    images: Tensor, renders: Tensor, labels: list[int], psnr: list[float], path: str | Path
) -> None:
    """Top row: images; bottom row: the INRs rendered on the same grid."""
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.2))
    for k in range(n):
        axes[0, k].imshow(images[k], cmap="gray", vmin=0, vmax=1)
        axes[0, k].set_title(f"digit {labels[k]}", fontsize=8)
        axes[1, k].imshow(renders[k].clamp(0, 1), cmap="gray", vmin=0, vmax=1)
        axes[1, k].set_xlabel(f"{psnr[k]:.1f} dB", fontsize=8)
        for ax in axes[:, k]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("test images (top) and their SIREN INRs (bottom)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def render_examples(zoo_dir: Path, images: Tensor) -> tuple:
    """The first test INR of every label, rendered on its image grid: ``(images, renders,
    labels, PSNRs)``."""
    zoo = load_zoo(zoo_dir)
    params, recs = zoo.select("test")
    recipe = zoo.info["recipe"]["fit"]
    h, w = zoo.info["image_shape"]
    first: dict[int, int] = {}
    for i, r in enumerate(recs):
        first.setdefault(r.label, i)
    picked = [first[k] for k in sorted(first)]
    sub = {k: v[picked] for k, v in params.items()}
    with torch.no_grad():
        out = siren_forward(sub, zoo.spec, coordinate_grid(h, w), recipe["omega0"], output_offset(recipe["variant"]))
    renders = out.reshape(len(picked), h, w)
    idx = [recs[i].image_index for i in picked]
    return images[idx], renders, [recs[i].label for i in picked], [recs[i].psnr for i in picked]


def write_curves(runs: list[dict], models: list[str], curves_dir: Path) -> None:
    """``<model>.csv`` per model: its per-epoch means over seeds (:func:`curves`)."""
    for model in models:
        rows = curves(runs, model)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(curves_dir / f"{model}.csv", buf.getvalue())


def section(dirs: dict[str, Path], params, out: Path) -> tuple[Section, dict]:
    """The INR classification section: its table and claims, per-epoch CSVs (``out/curves``),
    learning curves and reconstructions; then the comparison with the official code (only for
    the graphs it ran on) and the zoo-regime study, where their files exist. ``dirs``: ``zoo``,
    ``graphs``, ``train``, and optionally ``reference``, ``regime`` files. Returns the section
    and the per-model summary."""
    results = read_json(dirs["train"] / "results.json")
    runs = results["runs"]
    summary = summarize(runs)
    write_curves(runs, list(summary), out / "curves")
    zoo_info = read_json(dirs["zoo"] / "zoo.json")
    graph_meta = read_json(dirs["graphs"] / "meta.json")
    plot_learning_curves(runs, out / "figures" / "learning_curves.png")
    images, _ = load_images(params.data.source)
    plot_reconstructions(*render_examples(dirs["zoo"], images), out / "figures" / "reconstructions.png")
    md = results_markdown(summary, zoo_info["summary"], graph_meta["counts"], params.profile, len(params.train.seeds))
    md += task_claims("inr_classification", runs)
    reference_file, regime_file = dirs.get("reference"), dirs.get("regime")
    if reference_file is not None and reference_file.exists():
        version = data_version(graph_meta)  # what every run of these graphs records
        table = reference_file.with_suffix(".md").read_text(encoding="utf-8")
        md += "\n" + reference_markdown(read_json(reference_file), table, version)
    if regime_file is not None and regime_file.exists():
        default = {"init": params.zoo.init, "steps": params.zoo.steps, "lr": params.zoo.lr}
        md += "\n" + regime_markdown(read_json(regime_file), default)
    figures = ("learning_curves.png", "reconstructions.png")
    return Section(md, {"inr_classification": metrics_of(summary)}, figures), summary
