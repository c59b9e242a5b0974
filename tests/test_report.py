"""The report's sections (zoo regime, the official code beside, CNN claims) on made-up runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.report.common import task_claims
from pipeline.report.reference import reference_markdown
from pipeline.report.regime import regime_markdown
from pipeline.stats import kendall_tau


def test_the_regime_section_marks_the_profiles_recipe():
    regime = json.loads(Path("reports/zoo_regime/regime.json").read_text())
    name, recipe = next(iter(regime["recipes"].items()))
    md = regime_markdown(regime, dict(recipe))
    assert f"| {name} (this profile) |" in md
    assert md.count("(this profile)") == sum(r == recipe for r in regime["recipes"].values())
    acc = 100 * regime["results"][name]["test_acc"][regime["setup"]["models"][0]]
    assert f"{acc:.1f}" in md.split(f"| {name} (this profile) |")[1].splitlines()[0]


def test_the_reference_section_is_shown_only_for_the_graphs_it_ran_on():
    table = Path("reports/reference/side_by_side.md").read_text()
    result = {"data_version": "abc123", "runs": []}
    md = reference_markdown(result, table, "abc123")
    assert md.startswith("### Is it the implementation?")
    rows = [line for line in table.splitlines() if line.startswith("| dwsnet") or line.startswith("| nfn")]
    assert rows and all(row in md for row in rows)
    stale = reference_markdown(result, table, "def456")
    assert "not shown" in stale and "experiments/reference_side_by_side.py" in stale
    assert not any(row in stale for row in rows)
    assert "not recorded" in reference_markdown({"runs": []}, table, "def456")


def _cnn_runs(models: dict[str, float], n: int = 200) -> list[dict]:
    """Regression runs with saved test predictions: ``models[m]`` the noise of model m's predictions."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(n, generator=g)
    runs = []
    for model, noise in models.items():
        for seed in range(3):
            pred = target + noise * torch.randn(n, generator=g)
            runs.append(
                {
                    "model": model, "seed": seed, "config": {"mode": "np"} if model == "nfn" else {},
                    "test": {"tau": kendall_tau(pred, target), "r2": 0.0}, "n_params": 10,
                    "seconds_per_epoch": 1.0, "history": [{"epoch": 1}], "select": "r2", "best_epoch": 1,
                    "test_predictions": pred.tolist(), "test_targets": target.tolist(),
                }
            )  # fmt: skip
    return runs


def test_cnn_claims_come_with_bootstrap_intervals_and_unrun_models_are_listed():
    homo = _cnn_runs({"statnn": 0.3, "ng_gnn": 0.05, "nfn": 0.3})  # NG-GNN far better; NFN the same as StatNN
    hetero = _cnn_runs({"statnn": 0.05, "ng_gnn": 0.3})  # the claim fails here
    md = task_claims("cnn_homogeneous", homo, n_boot=200) + task_claims("cnn_heterogeneous", hetero, n_boot=200)
    homo_md, hetero_md = md.split("**The papers' claims")[1:]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in homo_md.splitlines() if line.startswith("| ")}
    homo_gnn = rows["NG-GNN beats StatNN (per-tensor statistics)"]
    assert "| holds |" in homo_gnn and " [+0." in homo_gnn  # a positive interval
    assert "| inconclusive |" in rows["NFN (NP) beats StatNN (per-tensor statistics)"]
    assert (
        "not run (`ng_t`: `-S 'cnn.train.models=[..., ng_t]'`)" in rows["`ng_t` beats StatNN (per-tensor statistics)"]
    )
    assert "`-S 'cnn.train.models=[..., nfn]' -S 'cnn.train.nfn.mode=hnp'`" in homo_md
    assert "| **fails** |" in next(line for line in hetero_md.splitlines() if line.startswith("| NG-GNN beats"))
    assert "heterogeneous_models=[..., ng_t]" in hetero_md


def test_the_inr_table_names_what_sizes_each_model_and_what_it_computes():
    from pipeline.report.common import settings_summary

    ng_t = {"attention": "edges", "heads": 4, "hidden": 16, "layers": 4, "probe_features": 0, "dropout": 0.0}
    assert settings_summary(ng_t) == "width 16, 4 layers, edge attention"
    assert "all-pairs attention" in settings_summary(ng_t | {"attention": "all_pairs"})
    dws = {"hidden": 32, "layers": 5, "set_heads": 8, "dropout": 0.0}
    assert settings_summary(dws) == "width 32, 5 layers, set attention, 8 heads"
    assert "no set attention" in settings_summary(dws | {"set_heads": 0})
    gnn = {"hidden": 16, "layers": 4, "fourier_features": 16, "probe_features": 16, "positional": False}
    assert settings_summary(gnn) == "width 16, 4 layers, 16 Fourier features, 16 probes, no positional embeddings"


def test_task_sections_are_found_by_name_and_each_names_its_stage_folder():
    """Every module of ``pipeline/report`` with ``INPUT`` is a task section, in ``ORDER``; the
    report stage's options come from them, each distinct, and a missing folder skips its section."""
    from pipeline.config import Params
    from pipeline.report import task_sections
    from stages.report import INPUTS

    sections = task_sections()
    assert [m.KEY for m in sections] == ["edit", "kan", "cnn", "adapt", "l2o"]
    assert len({m.KEY for m in sections}) == len(sections) and all(INPUTS[m.KEY] == m.INPUT for m in sections)
    for m in sections:  # before its stage has run, a section is left out (None), never an error
        assert m.section(Path("/nonexistent") / m.INPUT, Params(), Path("/nonexistent/figures")) is None
