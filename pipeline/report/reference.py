"""metazoo beside the official implementations, and the long single runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from pipeline.models import model_label
from pipeline.report.common import save_figure


def reference_markdown(side_by_side: dict, table: str, data_version: str) -> str:
    """The section that puts the claims beside the official code: the table that
    ``experiments/reference_side_by_side.py`` writes (``reports/reference/side_by_side.{json,md}``),
    which trains the official model classes and metazoo's on the same zoo and steps. Shown only when
    it ran on the current graphs (``side_by_side["data_version"] == data_version``); otherwise the
    section says it is stale and how to rerun it."""
    title = "### Is it the implementation? The official code on the same zoo"
    if side_by_side.get("data_version") != data_version:
        return "\n".join(
            [
                title,
                "",
                "`reports/reference/side_by_side.json` was measured on other graphs than this report's "
                f"(its data version {str(side_by_side.get('data_version') or 'not recorded')[:12]}, this "
                f"report's {data_version[:12]}), so it is not shown. Rerun it on the current zoo: "
                "`python experiments/reference_side_by_side.py --runs <model> --setting main <checkouts>`, "
                "one file per model and setting, merged with `--render` (its docstring: settings and time).",
                "",
            ]
        )
    return "\n".join(
        [
            title,
            "",
            "Where a claim above fails, this table separates the implementation from the setting: "
            "the official repositories' model classes (imported from their checkouts, never "
            "copied) and metazoo's trained on these graphs with the same splits and number of "
            "epochs, test accuracy at the best validation epoch. Setting *main*: the main table's "
            "models (metazoo's exactly, the official ones at the same width and depth); *official*: "
            "the official default sizes (metazoo's: the paper profile). *Reference recipe*: the "
            "official training script's optimizer, schedule, augmentation and batch size; *metazoo "
            "recipe*: this pipeline's, for either model.",
            "",
            table.strip(),
            "",
        ]
    )


def plot_long_run(record: dict, path: str | Path) -> None:
    """Validation R² against training steps of one long run, with the default profile's step
    budget and the position-only reference marked."""
    steps = [h["step"] for h in record["history"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(steps, [h["val_r2"] for h in record["history"]], marker="o", ms=3, label=f"{record['model']} validation R²")
    ax.axhline(record["reference"]["r2"], color="gray", ls="--", label="position-only reference (test)")
    ax.axvline(record["default_steps"], color="k", ls=":", lw=1, label="default profile's steps")
    ax.set(xlabel="training step", ylabel="R²", title="Expressivity check: one long run")
    ax.set_ylim(bottom=max(-0.2, float(ax.get_ylim()[0])))
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_long_run_epochs(record: dict, path: str | Path) -> None:
    """Validation accuracy and test accuracy at the best validation epoch so far, per epoch, of
    one long classification run, with the default profile's epoch budget marked."""
    epochs = [h["epoch"] for h in record["history"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(epochs, [100 * h["val_acc"] for h in record["history"]], lw=1, label="validation accuracy")
    best = [100 * h["test_acc_at_best_val"] for h in record["history"]]
    ax.plot(epochs, best, lw=1.5, label="test accuracy at the best validation epoch so far")
    ax.axvline(record["default_epochs"], color="k", ls=":", lw=1, label="default profile's epochs")
    title = f"{model_label(record['model'], record['config'])}: one long run"
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
