"""How far a fitted zoo moved from its initialization (the zoo-regime study)."""

from __future__ import annotations

from pipeline.report.common import markdown_table


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
