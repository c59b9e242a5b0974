"""INR editing: the editors' table, claims and example renders."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pipeline.io import read_json
from pipeline.models import variant_key
from pipeline.report.common import pm, published, reference_summary, save_figure, summarize_metrics, task_claims
from pipeline.report.section import Section, metrics_of

KEY = "edit"  # the report stage's option --edit: the INR editing runs (``python -m stages.fit edit``)
INPUT = "data/edit"  # its default
ORDER = 10  # the section's place among the task sections


def summarize_editing(runs: list[dict]) -> dict[str, dict]:
    """:func:`summarize_metrics` of the editing runs, with the published editing MSE."""
    out = summarize_metrics(runs)
    for model, row in out.items():
        config = next(r["config"] for r in runs if r["model"] == model)
        row["published"] = published("inr_editing", variant_key(model, config))
    return out


def editing_markdown(summary: dict, reference: dict, n_train: int, n_test: int, n_seeds: int, epochs: int) -> str:
    """The editing section of ``results.md``: test MSE of every editor and of the unedited INRs.

    Args:
        summary: :func:`summarize_editing` of the ``edit`` runs.  reference: :func:`reference_summary`
            (the unedited INRs' MSE against the dilated images).
        n_train, n_test: INRs trained on / tested on.  n_seeds, epochs: of every run.
    """
    lines = [
        "## INR editing: dilation",
        "",
        f"Each equivariant model's editor maps a SIREN's weights to edited weights θ' = θ + α·Δ(θ) (α learned, "
        f"starting small); the loss is the MSE between the edited INR rendered on the 28×28 grid and the "
        f"dilated image (3×3, one iteration). {n_train} training INRs, {n_test} test INRs, {epochs} epochs; "
        f"test MSE at the best validation epoch, mean ± std over {n_seeds} seeds.",
        "",
        "| model | parameters | test MSE (×10⁻²) | best epoch | s / epoch | published, MNIST INRs (×10⁻²)* |",
        "|---|---:|---:|---:|---:|---:|",
        f"| no edit (the INR itself) | 0 | {pm(reference, 'test_mse', 100, 2)} | – | – | – |",
    ]
    for s in summary.values():
        lines.append(
            f"| {s['label']} | {s['n_params']:,} | {pm(s, 'mse', 100, 2)} | {s['best_epoch_mean']:.1f} / "
            f"{s['epochs']} | {s['seconds_per_epoch']:.1f} | {s['published']} |"
        )
    lines += [
        "",
        "\\* Neural Graphs, Table 5: the published 55k-INR MNIST zoo, a **different data set** and far longer "
        "training; for orientation only.",
        "",
        "![editing examples](figures/editing_examples.png)",
        "",
    ]
    return "\n".join(lines)


def plot_editing_examples(examples: dict[str, dict], path: str | Path) -> None:
    """Rows: the INR, the dilated target, then each model's edited INR (seed of the first run).

    Args:
        examples: ``{row label: {"original"|"target"|"edited": (n, H, W) nested lists}}``, one
            entry per model; the first entry's original and target rows are drawn once.
    """
    first = next(iter(examples.values()))
    rows = [("INR", first["original"]), ("target: dilated", first["target"])]
    rows += [(label, ex["edited"]) for label, ex in examples.items()]
    n = len(first["target"])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.2, 1.25 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for k in range(n):
            ax = axes[i, k]
            ax.imshow(torch.tensor(imgs[k]).clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("INR editing (dilation) on test INRs", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def section(edit_dir: Path, params, figures: Path) -> Section | None:
    """The editing table, claims, metrics and example figure, if the ``edit`` stage has run."""
    if not (edit_dir / "results.json").exists():
        return None
    runs = read_json(edit_dir / "results.json")["runs"]
    summary = summarize_editing(runs)
    reference = reference_summary(runs)
    first_seed = min(r["seed"] for r in runs)
    examples = {
        s["label"]: next(r for r in runs if r["model"] == m and r["seed"] == first_seed)["examples"]
        for m, s in summary.items()
    }
    plot_editing_examples(examples, figures / "editing_examples.png")
    r0 = runs[0]
    md = editing_markdown(
        summary, reference, r0["n_train"], r0["n_test"], len({r["seed"] for r in runs}), len(r0["history"])
    )
    md += task_claims("inr_editing", runs)
    metrics = {"inr_editing": metrics_of(summary), "inr_editing_no_edit_reference": reference}
    return Section(md, metrics, ("editing_examples.png",))
