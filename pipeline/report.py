"""Tables and figures from training results (plain functions: dicts in, text/PNGs out)."""

from __future__ import annotations

import functools
import statistics
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import Tensor  # noqa: E402

from pipeline.io import atomic_write  # noqa: E402
from pipeline.models import model_label, report_order, variant_key  # noqa: E402

KAN_TASK_TITLES = {
    "inr": "(a) KAN-INR classification (digit of the image a KAN-INR encodes)",
    "classifier": "(b) Accuracy prediction of KAN classifiers (target: the classifier's test accuracy)",
    "inr_forward": "(c) Expressivity check: predict a held-out KAN-INR's output at a query point "
    "(R² 0 = predicting the mean)",
}


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


def _mean_std(xs: list[float]) -> tuple[float, float]:
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
        val_m, val_s = _mean_std([r["best_val"] for r in rs])
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


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def regime_table(regime: dict, stats: tuple[str, ...], published_std: dict[str, float] | None = None) -> str:
    """The zoo-regime study (``experiments/zoo_regime.py``'s ``regime.json``) as a table: per
    recipe its settings, median PSNR, diverged INRs, the weight movement of the tensors
    ``stats``, the fitted standard deviations of ``published_std``'s tensors (with the
    published zoo's as a last row) and each model's test accuracy (%)."""
    models = regime["setup"]["models"]
    std = published_std or {}
    head = ["recipe", "init", "steps", "lr", "PSNR (dB)", "diverged"]
    head += [f"moved {t}" for t in stats] + [f"std {t}" for t in std] + models
    lines = []
    for name, r in regime["results"].items():
        z, t = regime["recipes"][name], r["tensors"]
        line = [name, z["init"], str(z["steps"]), f"{z['lr']:g}", f"{r['psnr_median']:.1f}", str(r["diverged"])]
        line += [f"{t[k]['moved']:.2f}" for k in stats] + [f"{t[k]['std']:.3f}" for k in std]
        lines.append(line + [f"{100 * r['test_acc'][m]:.1f}" for m in models])
    if std:
        blank = [""] * (len(head) - len(std) - len(models) - 1)
        lines.append(["published DWSNets zoo", *blank, *(f"{v:.3f}" for v in std.values()), *[""] * len(models)])
    return markdown_table(head, lines)


def regime_markdown(regime: dict, default: dict | None = None) -> str:
    """The zoo-regime section of ``results.md``: which zoo recipe lets weight-only models learn;
    the recipe equal to ``default`` (``{"init", "steps", "lr"}`` of the profile's zoo) is marked."""
    if default is not None:
        regime = dict(
            regime,
            results={
                (f"{n} (this profile)" if regime["recipes"][n] == default else n): r
                for n, r in regime["results"].items()
            },
        )
        regime["recipes"] = {(f"{n} (this profile)" if z == default else n): z for n, z in regime["recipes"].items()}
    setup = regime["setup"]
    n_train, n_val, n_test = setup["sizes"]
    changes = f", with {', '.join(setup['changes'])}" if setup.get("changes") else ""
    return "\n".join(
        [
            "## Zoo regime: which SIREN zoo recipe lets weight-only models learn",
            "",
            f"`python experiments/zoo_regime.py` runs this pipeline's zoo, graphs and train stages "
            f"once per recipe on {n_train} / {n_val} / {n_test} train / val / test INRs "
            f"({setup['epochs']} epochs, seed {setup['seeds'][0]}{changes}; weight-only models, "
            "NG-GNN without probes). *moved W0*: median over training INRs of ||θ − θ₀|| / ||θ|| "
            "for the first layer's weights (0: left as initialized); test accuracy (%) at the best "
            "validation epoch. Full table: `reports/zoo_regime/regime.md`.",
            "",
            regime_table(regime, ("W0",)),
            "",
        ]
    )


def summarize_editing(runs: list[dict]) -> dict[str, dict]:
    """:func:`summarize_metrics` of the editing runs, with the published editing MSE."""
    out = summarize_metrics(runs)
    for model, row in out.items():
        config = next(r["config"] for r in runs if r["model"] == model)
        row["published"] = published("inr_editing", variant_key(model, config))
    return out


def summarize_metrics(runs: list[dict]) -> dict[str, dict]:
    """``{model: {<metric>_mean, <metric>_std for every test metric, n_params, ...}}`` over seeds.

    Test metrics are those at each run's best validation epoch.
    """
    out: dict[str, dict] = {}
    for model in models_in_order(runs):
        rs = [r for r in runs if r["model"] == model]
        row: dict = {}
        for key in rs[0]["test"]:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r["test"][key] for r in rs])
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


def _pm(s: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * s[key + '_mean']:.{digits}f} ± {scale * s[key + '_std']:.{digits}f}"


def reference_summary(runs: list[dict]) -> dict[str, float]:
    """Mean ± std over runs of the position-only reference's test metrics (``run["reference"]``)."""
    out: dict[str, float] = {}
    for key in runs[0]["reference"]:
        out[f"test_{key}_mean"], out[f"test_{key}_std"] = _mean_std([r["reference"][key] for r in runs])
    return out


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
                    f"| {s['label']} | {s['n_params']:,} | {_pm(s, 'acc', 100)} | {s['seconds_per_epoch']:.1f} "
                    f"| {published(f'kan_{task}', m)} |"
                )
        else:
            tau = "tau_mean" in next(iter(summary.values()))
            head = "| model | parameters |" + (" Kendall τ |" if tau else "") + " R² | test MSE | s / epoch |"
            head += " published WS-KAN* |" if task == "classifier" else ""
            lines += [head, "|---|---:|" + ("---:|" if tau else "") + "---:|---:|---:|" + ("---:|" if pub else "")]
            for m, s in summary.items():
                row = f"| {s['label']} | {s['n_params']:,} |"
                row += f" {_pm(s, 'tau', 1, 3)} |" if tau else ""
                row += f" {_pm(s, 'r2', 1, 3)} | {s['mse_mean']:.2e} ± {s['mse_std']:.1e} |"
                row += f" {s['seconds_per_epoch']:.1f} |"
                row += f" {published(f'kan_{task}', m)} |" if pub else ""
                lines.append(row)
            if task == "inr_forward":
                lines += [
                    "",
                    "Reference that ignores the KAN: the mean output of the training KANs at the query point "
                    f"(the best predictor of the position alone), test R² {_pm(reference, 'test_r2', 1, 3)}. A model "
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
                f"| {s['label']} | {s['n_params']:,} | {_pm(s, 'tau', 1, 3)} | {_pm(s, 'r2', 1, 3)} "
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
    _save(fig, path)


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
        novel = _pm(s, "novel_acc", 100) if "novel_acc_mean" in s else "–"
        timing = (
            "– | –"
            if key == NO_ADAPTATION
            else f"{s['best_epoch_mean']:.1f} / {s['epochs']} | {s['seconds_per_epoch']:.1f}"
        )
        lines.append(
            f"| {s['label']} | {s['n_params']:,} | {_pm(s, 'acc', 100)} | {novel} | {_pm(s, 'source_acc', 100)} "
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
        novel = _pm(zoo, f"novel_{key}", 100) if f"novel_{key}_mean" in zoo else "–"
        lines.append(f"| {name} | {_pm(zoo, f'test_{key}', 100)} | {novel} |")
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
    _save(fig, path)


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
    _save(fig, path)


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
        f"| no edit (the INR itself) | 0 | {_pm(reference, 'test_mse', 100, 2)} | – | – | – |",
    ]
    for s in summary.values():
        lines.append(
            f"| {s['label']} | {s['n_params']:,} | {_pm(s, 'mse', 100, 2)} | {s['best_epoch_mean']:.1f} / "
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
    _save(fig, path)


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
    _save(fig, path)


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
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


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
    _save(fig, path)


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
    _save(fig, path)


L2O_LABELS = {
    "adam": "Adam (lr tuned)",
    "sgd": "SGD + momentum (lr tuned)",
    "ff": "FF (per-parameter MLP)",
    "ng_gnn": "NG-GNN",
    "ng_t": "NG-T",
}
L2O_TASKS = ("meta_task", "test_task")


def summarize_l2o(runs: list[dict]) -> dict[str, dict]:
    """``{optimizer: {<task>_{loss,acc}_{mean,std}, lrs, n_params, wall_seconds, label, key,
    published}}`` over seeds (a seed's number is the mean over its evaluation nets), in
    :data:`L2O_LABELS` order."""
    out: dict[str, dict] = {}
    for name in [n for n in L2O_LABELS if any(r["model"] == n for r in runs)]:
        rs = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        row: dict = {}
        for key in rs[0]["test"]:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r["test"][key] for r in rs])
        row |= {
            "n_seeds": len(rs),
            "n_params": rs[0]["n_params"],
            "wall_seconds": statistics.fmean(r["wall_seconds"] for r in rs),
            "lrs": sorted({r["lr"] for r in rs if r.get("lr") is not None}),
            "label": L2O_LABELS[name],
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
    for name, label in L2O_LABELS.items():
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
            f"| {s['label']} | {n_params} | {lr} | {_pm(s, 'meta_task_loss', 1, 3)} "
            f"| {_pm(s, 'meta_task_acc', 100)} | {_pm(s, 'test_task_loss', 1, 3)} | {_pm(s, 'test_task_acc', 100)} "
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
        for name, label in L2O_LABELS.items():
            rs = [r for r in runs if r["model"] == name]
            if rs:
                curve = torch.tensor([r["curves"][task] for r in rs]).mean(0)
                ax.plot(range(1, len(curve) + 1), curve, lw=1.2, label=label)
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title=task.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
