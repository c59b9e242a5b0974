"""Domain adaptation: the adapted classifiers against their baselines."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pipeline.io import read_json
from pipeline.models import variant_key
from pipeline.report.common import (
    pm,
    published,
    reference_summary,
    save_figure,
    summarize_metrics,
    task_claims,
)
from pipeline.report.section import Section, metrics_of

KEY = "adapt"  # the report stage's option --adapt: the domain-adaptation zoo, graphs and runs
INPUT = "data/adapt"  # its default
ORDER = 40  # the section's place among the task sections


NO_ADAPTATION = "none"  # the claims' key of the unadapted nets (published_results.yaml: domain_adaptation)


def summarize_adaptation(runs: list[dict]) -> dict[str, dict]:
    """:func:`summarize_metrics` of the ``adapt`` runs, first a row for the unadapted test nets
    (``runs[*]["reference"]``: the same nets every run, so no spread over seeds), each row with
    its published-number ``key``."""
    ref = reference_summary(runs)
    out: dict[str, dict] = {
        NO_ADAPTATION: {k.removeprefix("test_"): v for k, v in ref.items()} | {"label": "no adaptation", "n_params": 0}
    }
    out |= summarize_metrics(runs)
    for model, row in out.items():
        config = next((r["config"] for r in runs if r["model"] == model), {})
        row["key"] = variant_key(model, config) if model != NO_ADAPTATION else NO_ADAPTATION
        row["published"] = published("domain_adaptation", row["key"])
    return out


def adaptation_claims(runs: list[dict], n_boot: int = 1000) -> str:
    """The domain-adaptation claims (:func:`task_claims`), the unadapted test nets as ``none``."""
    from pipeline.claims import Group

    ref = runs[0].get("reference_predictions")
    none = Group("no adaptation", [torch.tensor(ref)] if ref else None)
    return task_claims("domain_adaptation", runs, {NO_ADAPTATION: none}, n_boot)


def adaptation_markdown(
    summary: dict, zoo: dict, counts: dict, corruption: dict, n_seeds: int, claims: str = ""
) -> str:
    """The domain-adaptation section of ``results.md``: target accuracy of every adapter (and on
    the novel pairs alone, and on the source afterwards), the baselines of the zoo, the published
    numbers beside (a different data set) and the papers' claims checked.

    Args:
        summary: :func:`summarize_adaptation`.  zoo: the zoo's summary (``zoo.json``).
        counts: nets per split.  corruption: the target domain's settings.  n_seeds: of every run.
        claims: :func:`adaptation_claims`.
    """
    rows = [s for k, s in summary.items() if k != NO_ADAPTATION]
    epochs = rows[0]["epochs"] if rows else 0
    c = corruption
    shift = (
        f"rotation {c['rotation']:g}° ± {c['jitter']:g}°{', left-right flip' if c['flip'] else ''}, Gaussian blur "
        f"σ {c['blur']:g} px, contrast ×{c['contrast']:g}, brightness {c['brightness']:+g}, noise σ {c['noise']:g}"
    )
    lines = [
        "## Domain adaptation: clean → corrupted digits",
        "",
        "Every net is a binary ReLU MLP (7×7 pooled digits → 32 → 32 → 2) trained on the clean digits of its "
        "own digit pair; the target domain is the same digits under one seeded corruption "
        f"({shift}). Each model's editor maps a net's weights to θ' = θ + α·Δ(θ), trained with the "
        "cross-entropy of the adapted nets on corrupted training digits of their pairs; a test net is "
        "adapted from its weights alone (no target label, zero-shot) and scored on corrupted held-out "
        f"digits. Nets per split: {counts}; the test nets of {len(zoo.get('novel_pairs', []))} novel digit "
        f"pairs (no training net has them) are scored apart. {epochs} epochs; test metrics at the best "
        f"validation epoch (target accuracy), mean ± std over {n_seeds} seeds. "
        'Settings and reasons: `docs/tasks.md`, "Domain adaptation".',
        "",
        "| model | parameters | target acc. (%) | novel pairs (%) | source acc. after (%) | best epoch | s / epoch "
        "| published, CIFAR-10 → corrupted CIFAR-10 (%)* |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in summary.items():
        novel = pm(s, "novel_acc", 100) if "novel_acc_mean" in s else "–"
        timing = (
            "– | –"
            if key == NO_ADAPTATION
            else f"{s['best_epoch_mean']:.1f} / {s['epochs']} | {s['seconds_per_epoch']:.1f}"
        )
        lines.append(
            f"| {s['label']} | {s['n_params']:,} | {pm(s, 'acc', 100)} | {novel} | {pm(s, 'source_acc', 100)} "
            f"| {timing} | {s['published']} |"
        )
    lines += [
        "",
        "Baselines of the zoo (mean ± std over the test nets, not over seeds):",
        "",
        "| baseline | target acc. (%) | novel pairs (%) |",
        "|---|---:|---:|",
    ]
    for name, key in (
        ("source nets, no adaptation", "target_acc"),
        ("fine-tuned on a few labelled target images (uses target labels)", "finetune_acc"),
        ("trained on the target domain (upper bound)", "oracle_acc"),
    ):
        novel = pm(zoo, f"novel_{key}", 100) if f"novel_{key}_mean" in zoo else "–"
        lines.append(f"| {name} | {pm(zoo, f'test_{key}', 100)} | {novel} |")
    lines += [
        "",
        "\\* DWSNets, domain adaptation: binary MLP classifiers of CIFAR-10 pairs adapted to CIFAR-10 under the "
        "authors' own corruptions (not the CIFAR-10-C benchmark), a **different data set**. For orientation only.",
        "",
    ]
    lines += [claims, "![target accuracy per adapter](figures/adaptation.png)", ""]
    return "\n".join(lines)


def plot_adaptation(summary: dict, zoo: dict, path: str | Path) -> None:
    """Target accuracy of every adapter (mean ± std over seeds) as bars, with the zoo's
    no-adaptation and trained-on-target accuracies as lines."""
    rows = list(summary.values())
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.6))
    y = range(len(rows))
    ax.barh(list(y), [100 * s["acc_mean"] for s in rows], xerr=[100 * s["acc_std"] for s in rows], color="tab:blue")
    ax.set_yticks(list(y), [s["label"] for s in rows], fontsize=8)
    ax.invert_yaxis()
    for key, style, name in (("test_target_acc", ":", "no adaptation"), ("test_oracle_acc", "--", "trained on target")):
        ax.axvline(100 * zoo[f"{key}_mean"], color="grey", ls=style, lw=1, label=name)
    ax.set(xlabel="target test accuracy (%)", xlim=(50, 100))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


def section(adapt_dir: Path, params, figures: Path) -> Section | None:
    """The domain-adaptation table, claims, metrics and figure, if the ``adapt`` stage has run."""
    if not (adapt_dir / "train" / "results.json").exists():
        return None
    runs = read_json(adapt_dir / "train" / "results.json")["runs"]
    summary = summarize_adaptation(runs)
    info = read_json(adapt_dir / "zoo" / "zoo.json")
    zoo = info["summary"] | {"novel_pairs": info["novel_pairs"]}
    plot_adaptation(summary, zoo, figures / "adaptation.png")
    counts = read_json(adapt_dir / "graphs" / "meta.json")["counts"]  # the nets trained on (finite ones)
    n_seeds = len({r["seed"] for r in runs})
    md = adaptation_markdown(summary, zoo, counts, info["recipe"]["corruption"], n_seeds, adaptation_claims(runs))
    metrics = {"domain_adaptation": metrics_of(summary), "domain_adaptation_baselines": info["summary"]}
    return Section(md, metrics, ("adaptation.png",))
