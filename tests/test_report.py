"""The report's checks of the papers' claims and its zoo-regime section, on made-up runs."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report import claims_markdown, published_results, reference_markdown, regime_markdown, summarize


def _runs(accs: dict[str, tuple[float, ...]], configs: dict[str, dict] | None = None) -> list[dict]:
    """One result per (model, seed) with test accuracy ``acc``, as the train stage writes them."""
    runs = []
    for model, per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            history = [{"epoch": 1, "val_acc": acc}]
            runs.append(
                {
                    "model": model,
                    "seed": seed,
                    "config": (configs or {}).get(model, {}),
                    "test": {"acc": acc},
                    "best_val": acc,
                    "best_epoch": 1,
                    "n_params": 10,
                    "seconds_per_epoch": 1.0,
                    "history": history,
                    "select": "acc",
                }
            )
    return runs


def _verdicts(md: str) -> dict[str, str]:
    """``{claim: "holds" | "**fails**"}`` from the claims table."""
    verdicts = ("holds", "**fails**", "within the seeds' spread")
    rows = [line.split(" | ") for line in md.splitlines() if any(f" | {v} | " in line for v in verdicts)]
    return {r[0].removeprefix("| "): r[4] for r in rows}


def test_every_claim_names_published_keys_and_a_source():
    keys = {k for task, table in published_results().items() if task != "claims" for k in table}
    known = keys | {"statnn"}  # StatNN has no published INR number, but its place in the order is claimed
    for task, claims in published_results()["claims"].items():
        for c in claims:
            assert {c["lower"], c["higher"]} <= known, (task, c)
            assert c["source"] and c["lower"] != c["higher"]


def test_claims_hold_or_fail_on_the_numbers_and_unrun_models_are_listed_as_not_run():
    configs = {"ng_gnn@probes": {"probe_features": 16}, "ng_gnn@no_pos": {"positional": False}, "nfn": {"mode": "np"}}
    runs = _runs(
        {
            "mlp": (0.20, 0.21, 0.19),
            "statnn": (0.45, 0.44, 0.46),
            "dwsnet": (0.50, 0.52, 0.48),  # 30 points above the MLP: holds the 15-point margin
            "nfn": (0.30, 0.31, 0.29),  # below StatNN: fails; 10 above the MLP: fails the margin
            "ng_gnn": (0.60, 0.61, 0.59),
            "ng_gnn@probes": (0.70, 0.71, 0.69),
            "ng_gnn@no_pos": (0.61, 0.60, 0.59),  # no drop beyond the seeds' spread
        },
        configs,
    )
    md = claims_markdown(summarize(runs))
    got = _verdicts(md)
    assert got["MLP on flattened weights < StatNN (per-tensor statistics)"] == "holds"
    assert got["MLP on flattened weights < DWSNet by ≥ 15 points"] == "holds"
    assert got["MLP on flattened weights < NFN (NP)"] == "holds"  # the papers' claim has no margin
    assert got["StatNN (per-tensor statistics) < NFN (NP)"] == "**fails**"
    assert got["DWSNet < NG-GNN"] == "holds"
    assert got["NG-GNN < NG-GNN (16 probe features)"] == "holds"
    assert got["NG-GNN (no positional embeddings) < NG-GNN"] == "within the seeds' spread"
    assert not any("NG-T" in claim for claim in got)  # not run: not checked, but listed
    assert "| DWSNet < `ng_t` | – | – | – | not run (`ng_t`: `-S 'train.models=[..., ng_t]'`) |" in md
    assert "| `mlp_perm`" not in md and "| MLP on flattened weights < `mlp_perm` |" in md
    ours = md.split("### Orderings no paper states")[1]
    assert "StatNN (per-tensor statistics) < NFN (NP)" in ours and "< NG-GNN |" not in ours
    assert "| 45.0 ± 1.0 vs 30.0 ± 1.0 | -15.0 | 2.0 | **fails** |" in md  # StatNN vs NFN


def test_a_tie_claim_holds_within_the_seeds_spread_and_fails_beyond_it():
    near = claims_markdown(summarize(_runs({"ng_gnn": (0.60, 0.64), "ng_t": (0.59, 0.61)})))
    assert _verdicts(near)["NG-GNN ≤ NG-T"] == "holds"  # 2 points below, std 2.8 + 1.4
    far = claims_markdown(summarize(_runs({"ng_gnn": (0.60, 0.61), "ng_t": (0.50, 0.51)})))
    assert _verdicts(far)["NG-GNN ≤ NG-T"] == "**fails**"
    alone = claims_markdown(summarize(_runs({"mlp": (0.1,)})))  # nothing to check, every claim listed
    n_claims = len(published_results()["claims"]["inr_classification"])
    assert alone.count("| – | – | – | not run (") == n_claims and not _verdicts(alone)


def test_the_regime_section_marks_the_profiles_recipe():
    regime = json.loads(Path("reports/zoo_regime/regime.json").read_text())
    name, recipe = next(iter(regime["recipes"].items()))
    md = regime_markdown(regime, dict(recipe))
    assert f"| {name} (this profile) |" in md
    assert md.count("(this profile)") == sum(r == recipe for r in regime["recipes"].values())
    acc = 100 * regime["results"][name]["test_acc"][regime["setup"]["models"][0]]
    assert f"{acc:.1f}" in md.split(f"| {name} (this profile) |")[1].splitlines()[0]


def test_the_reference_section_embeds_the_side_by_side_table():
    table = Path("reports/reference/side_by_side.md").read_text()
    md = reference_markdown(table)
    assert md.startswith("### Is it the implementation?")
    rows = [line for line in table.splitlines() if line.startswith("| dwsnet") or line.startswith("| nfn")]
    assert rows and all(row in md for row in rows)


def _cnn_runs(models: dict[str, float], n: int = 200) -> list[dict]:
    """Regression runs with saved test predictions: ``models[m]`` the noise of model m's predictions."""
    import torch

    from pipeline.stats import kendall_tau

    g = torch.Generator().manual_seed(0)
    target = torch.rand(n, generator=g)
    runs = []
    for model, noise in models.items():
        for seed in range(3):
            pred = target + noise * torch.randn(n, generator=g)
            tau = kendall_tau(pred, target)
            runs.append(
                {
                    "model": model, "seed": seed, "config": {"mode": "np"} if model == "nfn" else {},
                    "test": {"tau": tau, "r2": 0.0}, "best_val": tau, "best_epoch": 1, "n_params": 10,
                    "seconds_per_epoch": 1.0, "history": [{"epoch": 1}], "select": "r2",
                    "test_predictions": pred.tolist(), "test_targets": target.tolist(),
                }
            )  # fmt: skip
    return runs


def test_cnn_claims_come_with_bootstrap_intervals_and_unrun_models_are_listed():
    from pipeline.report import cnn_claims_markdown, summarize_cnn

    homo = _cnn_runs({"statnn": 0.3, "ng_gnn": 0.05, "nfn": 0.3})  # NG-GNN far better; NFN the same as StatNN
    hetero = _cnn_runs({"statnn": 0.05, "ng_gnn": 0.3})  # the claim fails here
    runs = {"homogeneous": homo, "heterogeneous": hetero}
    md = cnn_claims_markdown(runs, {f: summarize_cnn(r) for f, r in runs.items()}, n_boot=200)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in md.splitlines() if line.startswith("| ")}
    homo_gnn = rows["Homogeneous zoo: StatNN (per-tensor statistics) < NG-GNN"]
    assert "| holds |" in homo_gnn and " [+0." in homo_gnn  # a positive interval
    assert "| inconclusive |" in rows["Homogeneous zoo: StatNN (per-tensor statistics) < NFN (NP)"]
    assert (
        "not run (`ng_t`: `-S 'cnn.train.models=[..., ng_t]'`)"
        in rows["Homogeneous zoo: StatNN (per-tensor statistics) < `ng_t`"]
    )
    assert "`-S 'cnn.train.models=[..., nfn]' -S 'cnn.train.nfn.mode=hnp'`" in md
    assert "| **fails** |" in rows["Heterogeneous zoo: StatNN (per-tensor statistics) < NG-GNN"]
    assert "heterogeneous_models=[..., ng_t]" in rows["Heterogeneous zoo: StatNN (per-tensor statistics) < `ng_t`"]
