"""The CNN stages on a tiny profile, as a user runs them: cnn_zoo (bytes independent of the number
of Ray workers, resume, a corrupt shard named), cnn_graphs, cnn_train on both families, and the
report's generalization section."""

from __future__ import annotations

import hashlib
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.io import read_json
from tests.conftest import run_stage, write_params

FAMILIES = ("homogeneous", "heterogeneous")
# homogeneous: 8 runs in shards of 4 -> 2 shards; heterogeneous: 2 architectures x 4 runs -> 2 shards
N_NETS = {"homogeneous": 8 * 2, "heterogeneous": 2 * 4 * 2}


def _digests(out: Path) -> dict[str, str]:
    files = sorted((out / "shards").iterdir()) + [out / "manifest.csv"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def cnn_zoos(tmp_path_factory) -> dict:
    """Both families' zoos with 1 and with 2 Ray workers; two stage processes at a time."""
    tmp = tmp_path_factory.mktemp("cnn_zoos")
    jobs = {}
    for workers in (1, 2):
        for family in FAMILIES:
            job = tmp / f"{family}{workers}"  # own MLflow store: concurrent first use of one store races
            job.mkdir()
            jobs[(family, workers)] = (write_params(job / "params.yaml", {"ray": {"num_cpus": workers}}), job / "zoo")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(run_stage, f"cnn_zoo@{key[0]}", ["--params", str(p), "--out", str(o)], tmp)
            for key, (p, o) in jobs.items()
        }
        results = {key: f.result() for key, f in futures.items()}
    return {"jobs": jobs, "results": results}


@pytest.mark.parametrize("family", FAMILIES)
def test_cnn_zoo_bytes_identical_with_one_or_two_ray_workers(cnn_zoos, family: str):
    digests = []
    for workers in (1, 2):
        res = cnn_zoos["results"][(family, workers)]
        assert res.returncode == 0, res.stderr[-3000:]
        out = cnn_zoos["jobs"][(family, workers)][1]
        assert len((out / "manifest.csv").read_text().strip().splitlines()) == 1 + N_NETS[family]
        digests.append(_digests(out))
    assert digests[0] == digests[1]  # the same shards, each trained in the same order: workers only change placement
    info = read_json(cnn_zoos["jobs"][(family, 1)][1] / "zoo.json")
    assert len(info["architectures"]) == (1 if family == "homogeneous" else 2)
    assert 0.0 <= info["summary"]["test_acc_min"] <= info["summary"]["test_acc_max"] <= 1.0


def test_cnn_zoo_splits_by_run_and_rerun_refits_only_the_missing_shard(cnn_zoos, tmp_path: Path):
    from pipeline.zoo.store import read_rows

    params, src = cnn_zoos["jobs"][("heterogeneous", 1)]
    assert cnn_zoos["results"][("heterogeneous", 1)].returncode == 0
    rows = read_rows(src / "manifest.csv")
    split_of_run: dict[str, set[str]] = {}
    for r in rows:
        split_of_run.setdefault(r["run_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_run.values())  # every checkpoint of a run in one split
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    zoo = tmp_path / "zoo"
    shutil.copytree(src, zoo)
    victim = sorted((zoo / "shards").glob("shard_*.safetensors"))[-1]
    before = victim.read_bytes()
    victim.unlink()
    res = run_stage("cnn_zoo@heterogeneous", ["--params", str(params), "--out", str(zoo)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fitting 1" in res.stderr
    assert victim.read_bytes() == before  # a refit of the same shard: same runs, batch and order


def test_corrupt_cnn_shard_is_named_by_cnn_graphs(cnn_zoos, tmp_path: Path):
    params, src = cnn_zoos["jobs"][("homogeneous", 1)]
    zoo = tmp_path / "zoo"
    shutil.copytree(src, zoo)
    victim = zoo / "shards" / "shard_00001.safetensors"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    out = tmp_path / "g"
    args = ["--params", str(params), "--family", "homogeneous", "--zoo", str(zoo), "--out", str(out)]
    res = run_stage("cnn_graphs", args, tmp_path)
    assert res.returncode != 0
    assert "shard_00001.safetensors" in res.stderr
    assert not (out / "meta.json").exists()


@pytest.fixture(scope="module")
def cnn_trained(cnn_zoos, tmp_path_factory) -> dict[str, Path]:
    """cnn_graphs -> cnn_train for both families: every homogeneous-zoo model, and the models
    that read any architecture on the heterogeneous zoo."""
    tmp = tmp_path_factory.mktemp("cnn_train")
    over = {
        "cnn": {
            "train": {
                "models": ["mlp", "mlp_perm", "statnn", "dwsnet", "nfn", "ng_gnn", "ng_t"],
                "heterogeneous_models": ["statnn", "ng_gnn", "ng_t"],
                "seeds": [0],
                "epochs": 2,
                "dwsnet": {"hidden": 4, "layers": 2},
                "nfn": {"hidden": 4, "layers": 2, "mode": "hnp"},
                "ng_t": {"hidden": 8, "layers": 6, "heads": 2},
            }
        }
    }
    dirs = {}
    for family in FAMILIES:
        job = tmp / family
        job.mkdir()
        params = write_params(job / "params.yaml", over)
        zoo = cnn_zoos["jobs"][(family, 1)][1]
        for stage, args in (
            ("cnn_graphs", ["--family", family, "--zoo", str(zoo), "--out", str(job / "graphs")]),
            (f"cnn_train@{family}", ["--graphs", str(job / "graphs"), "--out", str(job / "train")]),
        ):
            res = run_stage(stage, ["--params", str(params), *args], tmp)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        (job / "zoo").symlink_to(zoo)
        dirs[family] = job
    return dirs


def test_cnn_graphs_share_one_format_and_only_a_one_architecture_zoo_has_a_spec(cnn_trained):
    homo = read_json(cnn_trained["homogeneous"] / "graphs" / "meta.json")
    hetero = read_json(cnn_trained["heterogeneous"] / "graphs" / "meta.json")
    assert homo["spec"] is not None and hetero["spec"] is None and hetero["norm_stats"] is None
    assert homo["kind"] == hetero["kind"] == "regression"
    assert len(hetero["architectures"]) == 2 and hetero["kernel_slot"] == max(
        max(a["kernels"]) for a in hetero["architectures"]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_cnn_train_reports_tau_and_test_predictions(cnn_trained, family: str):
    runs = read_json(cnn_trained[family] / "train" / "results.json")["runs"]
    meta = read_json(cnn_trained[family] / "graphs" / "meta.json")
    expected = {"homogeneous": {"mlp", "mlp_perm", "statnn", "dwsnet", "nfn", "ng_gnn", "ng_t"}}
    assert {r["model"] for r in runs} == expected.get(family, {"statnn", "ng_gnn", "ng_t"})
    for r in runs:
        assert r["select"] == "r2"
        assert len(r["test_predictions"]) == len(r["test_targets"]) == meta["counts"]["test"]
        # Kendall's tau is undefined (NaN) only when the predictions or the targets are all equal
        constant = len(set(r["test_predictions"])) == 1 or len(set(r["test_targets"])) == 1
        assert constant if math.isnan(r["test"]["tau"]) else -1.0 <= r["test"]["tau"] <= 1.0


def test_report_generalization_section(cnn_trained, tmp_path: Path):
    from pipeline.config import load_params
    from pipeline.report import cnn as cnn_report

    cnn = tmp_path / "cnn"
    for family, job in cnn_trained.items():
        (cnn / family).mkdir(parents=True)
        for part in ("zoo", "graphs", "train"):
            (cnn / family / part).symlink_to((job / part).resolve())
    params = load_params(write_params(tmp_path / "params.yaml", {"cnn": {"train": {"seeds": [0]}}}))
    section = cnn_report.section(cnn, params, tmp_path / "reports" / "figures")
    md, numbers = section.markdown, section.metrics
    assert "## Generalization" in md and "Kendall τ" in md and "0.804 ± 0.009 (Wild Park)" in md
    assert "| NG-GNN beats StatNN (per-tensor statistics) |" in md
    assert set(numbers["cnn_heterogeneous"]) == {"statnn", "ng_gnn", "ng_t"}
    assert (tmp_path / "reports" / "figures" / "cnn_scatter.png").read_bytes()[:4] == b"\x89PNG"


def test_params_name_a_model_that_cannot_read_the_heterogeneous_zoo(tmp_path: Path):
    from pipeline.config import ConfigError, load_params

    p = write_params(tmp_path / "params.yaml", {"cnn": {"train": {"heterogeneous_models": ["dwsnet"]}}})
    with pytest.raises(ConfigError, match=r"cnn\.train\.heterogeneous_models: 'dwsnet' reads one architecture"):
        load_params(p)
    # the deepest heterogeneous CNN has 6 parameter layers: a graph model must reach its input
    p = write_params(tmp_path / "params.yaml", {"cnn": {"train": {"ng_gnn": {"layers": 4}}}})
    with pytest.raises(ConfigError, match=r"cnn\.train\.ng_gnn\.layers: must be >= 6"):
        load_params(p)


@pytest.mark.parametrize("model", ["mlp", "ng_gnn"])
def test_a_saved_cnn_accuracy_predictor_applies_to_raw_cnns(cnn_trained, model: str):
    """A trained homogeneous-zoo predictor, reloaded from its file, predicts from raw CNN weights
    what it predicted in training on the test graphs; a heterogeneous-zoo one says what it needs."""
    from pipeline.saved import load
    from pipeline.zoo.cnn_zoo import load_cnn_zoo

    job = cnn_trained["homogeneous"]
    _, params, rows, _ = load_cnn_zoo(job / "zoo")
    test = [i for i, r in enumerate(rows[0]) if r["split"] == "test"]
    run = next(r for r in read_json(job / "train" / "results.json")["runs"] if r["model"] == model)
    pred = load(job / "train" / f"{model}_seed0").predict({k: v[test] for k, v in params[0].items()})
    assert pred.flatten().tolist() == pytest.approx(run["test_predictions"], abs=1e-5)
    with pytest.raises(ValueError, match="2 architectures"):
        load(cnn_trained["heterogeneous"] / "train" / "ng_gnn_seed0").predict(params[0])
