"""Every claim of published_results.yaml, checked on per-item predictions with known answers."""

from __future__ import annotations

import torch

from pipeline.claims import TASK_METRICS, Group, claims_markdown, groups_from_runs
from pipeline.models import model_names
from pipeline.report.adaptation import NO_ADAPTATION
from pipeline.report.common import published_results, task_claims
from pipeline.tasks.l2o import OPTIMIZER_LABELS

N = 500  # test items


def _classifier(target: torch.Tensor, p_correct: float, g: torch.Generator) -> torch.Tensor:
    right = torch.rand(target.shape, generator=g) < p_correct
    return torch.where(right, target, (target + 1) % 10)


def _runs(p_correct: dict[str, float], configs: dict[str, dict] | None = None, seeds: int = 3) -> list[dict]:
    """Classification runs as the train stage writes them: per-item predicted classes of the
    same test items, each model right with its probability."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(10, (N,), generator=g)
    runs = []
    for model, p in p_correct.items():
        for seed in range(seeds):
            pred = _classifier(target, p, g)
            acc = float((pred == target).float().mean())
            runs.append(
                {
                    "model": model, "seed": seed, "config": (configs or {}).get(model, {}),
                    "test": {"acc": acc}, "test_predictions": pred.tolist(), "test_targets": target.tolist(),
                }
            )  # fmt: skip
    return runs


def _rows(md: str) -> dict[str, list[str]]:
    """``{claim: cells}`` of every claims row."""
    cells = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    return {c[0]: c for c in cells if c[0] != "claim"}


def test_every_claim_is_of_a_known_task_and_names_known_models_and_a_source():
    models = set(model_names()) | set(OPTIMIZER_LABELS) | {NO_ADAPTATION}
    for task, claims in published_results()["claims"].items():
        assert task in TASK_METRICS, task
        for c in claims:
            for key in (c["lower"], c["higher"]):
                assert key.split("+")[0].removesuffix("_perm") in models, (task, key)
            assert c["source"] and c["lower"] != c["higher"]
            assert "margin" not in c or c.get("ours"), f"a margin is ours, not a paper's: {c}"


def test_verdicts_follow_the_intervals_and_unrun_models_are_listed_with_their_key():
    configs = {"ng_gnn@probes": {"probe_features": 16}, "ng_gnn@no_pos": {"positional": False}, "nfn": {"mode": "np"}}
    runs = _runs(
        {
            "mlp": 0.20,
            "statnn": 0.45,
            "dwsnet": 0.50,  # 30 points above the MLP: holds, also with the 15-point margin
            "nfn": 0.30,  # 15 points below StatNN: fails
            "ng_gnn": 0.60,
            "ng_gnn@probes": 0.70,
            "ng_gnn@no_pos": 0.60,  # the same as NG-GNN: inconclusive
        },
        configs,
    )
    md = task_claims("inr_classification", runs, n_boot=300)
    rows = _rows(md)
    assert rows["DWSNet beats MLP on flattened weights"][3] == "holds"
    assert rows["DWSNet beats MLP on flattened weights by ≥ 15"][3] == "holds"
    assert rows["NFN (NP) beats StatNN (per-tensor statistics)"][3] == "**fails**"
    assert rows["NG-GNN beats DWSNet"][3] == "holds"
    assert rows["NG-GNN (16 probe features) beats NG-GNN"][3] == "holds"
    assert rows["NG-GNN beats NG-GNN (no positional embeddings)"][3] == "inconclusive"
    # the interval sits around the true difference: 10 points, give or take the test set's error
    diff, interval = rows["NG-GNN beats DWSNet"][2].split(" [")
    lo, hi = (float(x) for x in interval.rstrip("]").split(", "))
    assert 4 < float(diff) < 16 and lo < float(diff) < hi and hi - lo < 12
    assert rows["`ng_t` beats DWSNet"][1:4] == ["–", "–", "not run (`ng_t`: `-S 'train.models=[..., ng_t]'`)"]
    paper, ours = md.split("**Orderings no paper states**")
    assert "NFN (NP) beats StatNN" in ours and "NFN (NP) beats StatNN" not in paper
    assert "beats DWSNet" in paper and "beats DWSNet" not in ours


def test_a_tie_claim_fails_only_when_the_second_model_is_surely_worse():
    near = _rows(task_claims("inr_classification", _runs({"ng_gnn": 0.60, "ng_t": 0.59}), n_boot=300))
    assert near["NG-T matches or beats NG-GNN"][3].startswith("holds")
    far = _rows(task_claims("inr_classification", _runs({"ng_gnn": 0.60, "ng_t": 0.40}), n_boot=300))
    assert far["NG-T matches or beats NG-GNN"][3] == "**fails**"


def test_every_claim_is_listed_when_nothing_ran():
    md = task_claims("inr_classification", _runs({"mlp": 0.1}, seeds=1), n_boot=50)
    n_claims = len(published_results()["claims"]["inr_classification"])
    assert md.count("| – | – | not run (") == n_claims


def test_a_lower_is_better_metric_is_oriented_so_that_the_better_model_holds():
    """Editing: per-INR MSEs; NG-T's are half of DWSNet's, so "NG-T beats DWSNet" holds."""
    g = torch.Generator().manual_seed(1)
    base = torch.rand(N, generator=g) * 0.04
    groups = {
        "dwsnet": Group("DWSNet", [base * (1 + 0.1 * torch.rand(N, generator=g)) for _ in range(3)]),
        "ng_t": Group("NG-T", [0.5 * base * (1 + 0.1 * torch.rand(N, generator=g)) for _ in range(3)]),
    }
    claims = [
        {"lower": "dwsnet", "higher": "ng_t", "source": "s"},
        {"lower": "ng_t", "higher": "dwsnet", "source": "t"},
    ]
    rows = _rows(claims_markdown("inr_editing", groups, claims, n_boot=200))
    better, worse = rows["NG-T beats DWSNet"], rows["DWSNet beats NG-T"]
    assert better[3] == "holds" and worse[3] == "**fails**"
    assert float(better[2].split(" [")[0]) > 0  # improvement: DWSNet's MSE minus NG-T's, x 1e-2
    shown = float(better[1].split(" ± ")[0])  # DWSNet's mean MSE over seeds, x 1e-2
    assert abs(shown - sum(100 * float(p.mean()) for p in groups["dwsnet"].predictions) / 3) < 0.006


def test_runs_without_saved_predictions_are_not_checked_and_say_so():
    runs = _runs({"mlp": 0.2, "dwsnet": 0.5})
    for r in runs:
        if r["model"] == "dwsnet":
            del r["test_predictions"]
    groups = groups_from_runs(runs, lambda r: r["model"], lambda r: r["model"])
    assert groups["dwsnet"].predictions is None and len(groups["mlp"].predictions) == 3
    row = _rows(task_claims("inr_classification", runs, n_boot=50))["DWSNet beats MLP on flattened weights"]
    assert row[3].startswith("not checked")


def test_groups_pair_the_seeds_in_order_and_keep_the_targets():
    runs = _runs({"mlp": 0.3})[::-1]  # results in any order
    g = groups_from_runs(runs, lambda r: r["model"], lambda r: r["model"])["mlp"]
    by_seed = {r["seed"]: r["test_predictions"] for r in runs}
    assert [p.tolist() for p in g.predictions] == [by_seed[s] for s in range(3)]
    assert g.targets.tolist() == runs[0]["test_targets"]
