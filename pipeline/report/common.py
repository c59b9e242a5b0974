"""What every report section uses: the papers' published numbers, per-model summaries over
seeds, claims tables, Markdown tables, figure saving."""

from __future__ import annotations

import functools
import statistics
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from pipeline.io import atomic_write
from pipeline.models import model_label, report_order, variant_key


@functools.cache
def published_results() -> dict[str, dict[str, dict[str, str]]]:
    """``{task: {model key: {"value", "source"}}}`` of ``pipeline/published_results.yaml``.

    Model keys as :func:`pipeline.models.variant_key`. The numbers were measured on the
    published data sets, not ours: tables quote them for orientation only.
    """
    text = resources.files("pipeline").joinpath("published_results.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def published(task: str, key: str) -> str:
    """The published number of model ``key`` on ``task``, as printed; ``"–"`` if none."""
    entry = published_results().get(task, {}).get(key)
    return entry["value"] if entry else "–"


def models_in_order(runs: list[dict]) -> list[str]:
    """The models of ``runs`` in report order (:func:`pipeline.models.report_order`: baselines first).

    Tables and figures do not depend on the order jobs were listed or submitted in (the
    ``models`` lists put the longest runs first so that the short ones fill the gaps).
    """
    return report_order(r["model"] for r in runs)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def settings_summary(config: dict) -> str:
    """The settings that size a model or change what it computes, in words: ``"width 16, 4
    layers, edge attention"``, read from the run's settings (``config``) by their names."""
    words = []
    if "hidden" in config:
        words.append(f"width {config['hidden']}")
    if "layers" in config:
        words.append(f"{config['layers']} layers")
    if "attention" in config:
        words.append(
            {"edges": "edge attention", "all_pairs": "all-pairs attention"}.get(config["attention"], "attention")
        )
    if "set_heads" in config:
        words.append(f"set attention, {config['set_heads']} heads" if config["set_heads"] else "no set attention")
    if config.get("fourier_features"):
        words.append(f"{config['fourier_features']} Fourier features")
    if config.get("probe_features"):
        words.append(f"{config['probe_features']} probes")
    if config.get("positional") is False:
        words.append("no positional embeddings")
    if config.get("augment"):
        words.append(f"augmentation: {config['augment']}")
    if config.get("dropout"):
        words.append(f"dropout {config['dropout']:g}")
    return ", ".join(words) or "–"


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """``{model: {test_acc_mean, test_acc_std, n_params, ...}}`` over seeds (test acc at best val epoch).

    The classification view of :func:`summarize_metrics`, plus validation accuracy and the
    published number for the SIREN table.
    """
    out: dict[str, dict[str, float]] = {}
    for model, row in summarize_metrics(runs).items():
        rs = [r for r in runs if r["model"] == model]
        val_m, val_s = mean_std([r["best_val"] for r in rs])
        out[model] = {
            "test_acc_mean": row["acc_mean"],
            "test_acc_std": row["acc_std"],
            "val_acc_mean": val_m,
            "val_acc_std": val_s,
            **{k: row[k] for k in ("n_params", "n_seeds", "best_epoch_mean", "seconds_per_epoch", "epochs", "label")},
            "key": (key := variant_key(model, rs[0]["config"])),
            "published": published("inr_classification", key),
            "settings": settings_summary(rs[0]["config"]),
        }
    return out


def task_claims(task: str, runs: list[dict], extra: dict | None = None, n_boot: int = 1000) -> str:
    """Every claim of ``published_results.yaml: claims.<task>`` checked on ``runs`` (their per-item
    test predictions; :func:`pipeline.claims.claims_markdown`). ``extra``: groups that are not
    runs, such as the unadapted nets (``{key: pipeline.claims.Group}``)."""
    from pipeline.claims import claims_markdown, groups_from_runs

    groups = groups_from_runs(
        runs, lambda r: variant_key(r["model"], r["config"]), lambda r: model_label(r["model"], r["config"])
    )
    claims = published_results().get("claims", {}).get(task, [])
    return claims_markdown(task, groups | (extra or {}), claims, n_boot)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def summarize_metrics(runs: list[dict]) -> dict[str, dict]:
    """``{model: {<metric>_mean, <metric>_std for every test metric, n_params, ...}}`` over seeds.

    Test metrics are those at each run's best validation epoch.
    """
    out: dict[str, dict] = {}
    for model in models_in_order(runs):
        rs = [r for r in runs if r["model"] == model]
        row: dict = {}
        for key in rs[0]["test"]:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r["test"][key] for r in rs])
        row |= {
            "n_params": rs[0]["n_params"],
            "n_seeds": len(rs),
            "best_epoch_mean": statistics.fmean(r["best_epoch"] for r in rs),
            "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in rs),
            "epochs": len(rs[0]["history"]),
            "label": model_label(model, rs[0]["config"]),
        }
        out[model] = row
    return out


def pm(s: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * s[key + '_mean']:.{digits}f} ± {scale * s[key + '_std']:.{digits}f}"


def reference_summary(runs: list[dict]) -> dict[str, float]:
    """Mean ± std over runs of the position-only reference's test metrics (``run["reference"]``)."""
    out: dict[str, float] = {}
    for key in runs[0]["reference"]:
        out[f"test_{key}_mean"], out[f"test_{key}_std"] = mean_std([r["reference"][key] for r in runs])
    return out


def curves(runs: list[dict], model: str) -> list[dict[str, float]]:
    """Per-epoch means over seeds of one model's history (rows for a DVC plot CSV)."""
    rs = [r for r in runs if r["model"] == model]
    rows = []
    for e in range(len(rs[0]["history"])):
        hs = [r["history"][e] for r in rs]
        row = {"epoch": hs[0]["epoch"]}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            row[key] = statistics.fmean(h[key] for h in hs)
        rows.append(row)
    return rows


def save_figure(fig, path: str | Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
