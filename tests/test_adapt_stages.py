"""The domain-adaptation stages on the tiny profile, as a user runs them: adapt_zoo (bytes
independent of the number of Ray workers, resume, a corrupt shard named), adapt_graphs, adapt,
and the report's section."""

from __future__ import annotations

import hashlib
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.io import read_json
from tests.conftest import run_stage, write_params

N_NETS = 90  # the tiny profile: 2 shards of 45


def _digests(out: Path) -> dict[str, str]:
    files = sorted((out / "shards").iterdir()) + [out / "manifest.csv"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def adapt_zoos(tmp_path_factory) -> dict:
    """The zoo with 1 and with 2 Ray workers, two stage processes at a time."""
    tmp = tmp_path_factory.mktemp("adapt_zoos")
    jobs = {}
    for workers in (1, 2):
        job = tmp / f"w{workers}"  # own MLflow store: concurrent first use of one store races
        job.mkdir()
        jobs[workers] = (write_params(job / "params.yaml", {"ray": {"num_cpus": workers}}), job / "zoo")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            w: pool.submit(run_stage, "adapt_zoo", ["--params", str(p), "--out", str(o)], tmp)
            for w, (p, o) in jobs.items()
        }
        results = {w: f.result() for w, f in futures.items()}
    return {"jobs": jobs, "results": results}


def test_adapt_zoo_bytes_identical_with_one_or_two_ray_workers(adapt_zoos):
    digests = []
    for workers in (1, 2):
        res = adapt_zoos["results"][workers]
        assert res.returncode == 0, res.stderr[-3000:]
        out = adapt_zoos["jobs"][workers][1]
        assert len((out / "manifest.csv").read_text().strip().splitlines()) == 1 + N_NETS
        digests.append(_digests(out))
    # 2 shards + manifest; the same shards, each trained in the same order: workers only change placement
    assert digests[0] == digests[1] and len(digests[0]) == 3
    info = read_json(adapt_zoos["jobs"][1][1] / "zoo.json")
    s = info["summary"]
    assert s["n_nets"] == N_NETS and len(info["novel_pairs"]) == 2
    for key in ("source_acc", "target_acc", "finetune_acc", "oracle_acc"):
        assert 0.0 <= s[f"test_{key}_mean"] <= 1.0 and 0.0 <= s[f"novel_{key}_mean"] <= 1.0


def test_adapt_zoo_rerun_refits_only_the_missing_shard(adapt_zoos, tmp_path: Path):
    from pipeline.zoo.store import read_rows

    params, src = adapt_zoos["jobs"][1]
    assert adapt_zoos["results"][1].returncode == 0
    rows = read_rows(src / "manifest.csv")
    novel = set(read_json(src / "zoo.json")["novel_pairs"])
    assert {r["split"] for r in rows if int(r["pair"]) in novel} == {"test"}
    zoo = tmp_path / "zoo"
    shutil.copytree(src, zoo)
    victim = zoo / "shards" / "shard_00001.safetensors"
    before = victim.read_bytes()
    victim.unlink()
    res = run_stage("adapt_zoo", ["--params", str(params), "--out", str(zoo)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # the plan is the fixture's: same recipe (code, environment, inputs), so one shard to fit
    assert read_json(zoo / "zoo.json")["recipe"] == read_json(src / "zoo.json")["recipe"]
    assert re.search(r"2 shards, 1 complete, fitting 1\b", res.stderr), res.stderr[-3000:]
    assert victim.read_bytes() == before  # a refit of the same shard: same nets, batch and order


def test_a_corrupt_classifier_shard_is_named_by_adapt_graphs(adapt_zoos, tmp_path: Path):
    params, src = adapt_zoos["jobs"][1]
    zoo = tmp_path / "zoo"
    shutil.copytree(src, zoo)
    victim = zoo / "shards" / "shard_00000.safetensors"
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensors
    victim.write_bytes(bytes(data))
    out = tmp_path / "g"
    res = run_stage("adapt_graphs", ["--params", str(params), "--zoo", str(zoo), "--out", str(out)], tmp_path)
    assert res.returncode != 0
    assert "shard_00000.safetensors" in res.stderr
    assert not (out / "meta.json").exists()


@pytest.fixture(scope="module")
def adapted(adapt_zoos, tmp_path_factory) -> Path:
    """adapt_graphs -> adapt with every adapter (one seed) on the 1-worker zoo."""
    job = tmp_path_factory.mktemp("adapt")
    models = ["mlp", "mlp_perm", "dwsnet", "nfn", "ng_gnn", "ng_t"]
    over = {
        "adapt": {
            "models": models,
            "seeds": [0],
            "nfn": {"hidden": 4, "layers": 2},
            "ng_gnn": {"hidden": 8, "layers": 3, "fourier_features": 0},
            "ng_t": {"hidden": 8, "layers": 3, "heads": 2},
        }
    }
    params = write_params(job / "params.yaml", over)
    zoo = adapt_zoos["jobs"][1][1]
    for stage, args in (
        ("adapt_graphs", ["--zoo", str(zoo), "--out", str(job / "graphs")]),
        ("adapt", ["--graphs", str(job / "graphs"), "--zoo", str(zoo), "--out", str(job / "train")]),
    ):
        res = run_stage(stage, ["--params", str(params), *args], job)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (job / "zoo").symlink_to(zoo)
    return job


def test_every_adapter_reports_target_novel_and_source_accuracy_beside_the_unadapted_nets(adapted):
    runs = read_json(adapted / "train" / "results.json")["runs"]
    zoo = read_json(adapted / "zoo" / "zoo.json")["summary"]
    assert {r["model"] for r in runs} == {"mlp", "mlp_perm", "dwsnet", "nfn", "ng_gnn", "ng_t"}
    for r in runs:
        assert r["select"] == "acc" and set(r["test"]) == {"acc", "loss", "source_acc", "novel_acc"}
        assert r["n_test"] == zoo["n_test"]
        # the unadapted test nets score what the zoo measured for them
        assert r["reference"]["acc"] == pytest.approx(zoo["test_target_acc_mean"], abs=1e-5)
        assert r["reference"]["novel_acc"] == pytest.approx(zoo["novel_target_acc_mean"], abs=1e-5)
    assert (adapted / "train" / "dwsnet_seed0.safetensors").exists()


def test_report_domain_adaptation_section(adapted, tmp_path: Path):
    from pipeline.report import adaptation

    section = adaptation.section(adapted, None, tmp_path / "reports" / "figures")
    md, numbers = section.markdown, section.metrics
    assert "## Domain adaptation" in md and "60.92 ± 0.41" in md and "71.36 ± 0.38" in md
    assert "| DWSNet beats no adaptation |" in md and "trained on the target domain (upper bound)" in md
    assert set(numbers["domain_adaptation"]) == {"none", "mlp", "mlp_perm", "dwsnet", "nfn", "ng_gnn", "ng_t"}
    assert (tmp_path / "reports" / "figures" / "adaptation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"models": ["statnn"]}, r"adapt\.models: 'statnn' has no editor"),
        ({"zoo": {"finetune_images": 5}}, r"adapt\.zoo\.finetune_images: 5 must be even"),
        ({"zoo": {"n_nets": 18}}, r"adapt\.zoo\.n_nets: 18 nets: none left for training"),
        ({"corruption": {"blurr": 1.0}}, r"adapt\.corruption\.blurr: unknown key"),
        ({"zoo": {"pool": 3}}, r"adapt\.zoo\.pool: 3 is not allowed"),
    ],
)
def test_bad_adapt_params_name_the_key(tmp_path: Path, over: dict, message: str):
    from pipeline.config import ConfigError, load_params

    with pytest.raises(ConfigError, match=message):
        load_params(write_params(tmp_path / "params.yaml", {"adapt": over}))
