"""The real pipeline, small: stage processes with their own local Ray cluster, SQLite MLflow, DVC in Git."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_stage, write_params

pytestmark = pytest.mark.slow  # every test here runs stage processes


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_or_ill_typed_param_fails_before_any_work(tmp_path: Path):
    params = write_params(tmp_path / "params.yaml", {"train": {"ng_gnn": {"hiden": 64}}})
    res = run_stage("zoo", ["--params", str(params), "--out", str(tmp_path / "zoo")], tmp_path, timeout=60)
    assert res.returncode == 2
    assert "train.ng_gnn.hiden: unknown key" in res.stderr
    assert not (tmp_path / "zoo").exists()

    params = write_params(tmp_path / "params.yaml", {"zoo": {"steps": "many"}})
    res = run_stage("train", ["--params", str(params)], tmp_path, timeout=60)
    assert res.returncode == 2
    assert "zoo.steps: expected int" in res.stderr


def test_zoo_bytes_identical_with_one_or_two_ray_workers(tmp_path: Path):
    digests = []
    for workers in (1, 2):
        params = write_params(tmp_path / f"p{workers}.yaml", {"ray": {"num_cpus": workers}})
        out = tmp_path / f"zoo{workers}"
        res = run_stage("zoo", ["--params", str(params), "--out", str(out)], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        shards = sorted((out / "shards").glob("*.safetensors"))
        assert len(shards) == 5  # 80 nets / 16 per shard
        digests.append(
            {p.name: _digest(p) for p in shards} | {f: _digest(out / f) for f in ("manifest.csv", "zoo.json")}
        )
    assert digests[0] == digests[1]  # the same shards, each fitted in the same order: workers only change placement


def test_killed_zoo_stage_resumes_with_only_the_missing_shards(tmp_path: Path):
    over = {"zoo": {"steps": 300, "shard_size": 8}, "ray": {"num_cpus": 1}}
    params = write_params(tmp_path / "params.yaml", over)
    out = tmp_path / "zoo"
    shard_dir = out / "shards"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [os.sys.executable, "-m", "stages.zoo", "--params", str(params), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list(shard_dir.glob("shard_*.safetensors"))) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray workers may finish the shard they hold before the reaper stops them; wait until stable
    count, stable_since = -1, time.time()
    while time.time() - stable_since < 5:
        now = len(list(shard_dir.glob("shard_*.safetensors")))
        if now != count:
            count, stable_since = now, time.time()
        time.sleep(0.2)
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_dir.glob("shard_*.safetensors")}
    assert 2 <= len(kept) < 10, f"the stage should have been killed mid-way, found {len(kept)} shards"
    assert not (out / "manifest.csv").exists()

    res = run_stage("zoo", ["--params", str(params), "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{len(kept)} complete, fitting {10 - len(kept)}" in res.stderr
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_dir.glob("shard_*.safetensors")}
    assert len(after) == 10
    for name, stamp in kept.items():
        assert after[name] == stamp, f"{name} was refitted"
    assert len((out / "manifest.csv").read_text().strip().splitlines()) == 1 + 80
    assert not list(shard_dir.glob(".*.tmp"))


def test_corrupt_shard_is_named_by_the_graphs_stage(tmp_path: Path):
    params = write_params(tmp_path / "params.yaml")
    zoo = tmp_path / "zoo"
    assert run_stage("zoo", ["--params", str(params), "--out", str(zoo)], tmp_path).returncode == 0
    victim = zoo / "shards" / "shard_00002.safetensors"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    res = run_stage("graphs", ["--params", str(params), "--zoo", str(zoo), "--out", str(tmp_path / "g")], tmp_path)
    assert res.returncode != 0
    assert "shard_00002.safetensors" in res.stderr
    assert not (tmp_path / "g" / "train.safetensors").exists()


def test_dvc_repro_end_to_end_then_noop(project: Path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["models"] = ["mlp", "ng_gnn@probes"]  # a settings variant, through every stage and MLflow
    params["train"]["ng_gnn@probes"] = {"probe_features": 2}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.time()
    res = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    first = time.time() - t0

    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    cls = metrics["inr_classification"]
    assert set(cls) == {"mlp", "ng_gnn@probes"}
    for m in cls.values():
        assert 0.0 <= m["test_acc_mean"] <= 1.0 and m["n_seeds"] == 2 and m["n_params"] > 0
    md = (project / "reports" / "results.md").read_text()
    assert "NG-GNN (2 probe features)" in md and "different data set" in md
    assert "## Zoo regime" in md
    # the side-by-side table ran on other graphs than these: its section says so instead of showing it
    assert "### Is it the implementation?" in md and "official, metazoo recipe" not in md and "not shown" in md
    assert "## Generalization: predicting a CNN's test accuracy" in md and "Kendall τ" in md
    assert set(metrics["cnn_homogeneous"]) == {"mlp", "statnn", "ng_gnn"}
    assert set(metrics["cnn_heterogeneous"]) == {"statnn", "ng_gnn"}
    assert "## Domain adaptation" in md and set(metrics["domain_adaptation"]) == {"none", "mlp", "dwsnet"}
    assert "## Learning to optimize" in md and set(metrics["learning_to_optimize"]) == {"adam", "sgd", "ff", "ng_gnn"}
    for fig in ("learning_curves.png", "reconstructions.png", "cnn_scatter.png", "adaptation.png", "l2o_curves.png"):
        assert (project / "reports" / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    curve = (project / "reports" / "curves" / "ng_gnn@probes.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,") and len(curve) == 1 + 2

    # MLflow: a parent run per stage, a child run per (model, seed) with per-epoch metrics
    con = sqlite3.connect(project / "mlflow.db")
    names = [r[0] for r in con.execute("select name from runs")]
    stages = (
        "zoo",
        "graphs",
        "train",
        "edit",
        "report",
        "cnn_zoo@heterogeneous",
        "cnn_train@homogeneous",
        "adapt",
        "l2o",
    )
    for stage in stages:
        assert stage in names
    children = {
        r[0]
        for r in con.execute(
            "select r.name from runs r join tags t on r.run_uuid = t.run_uuid where t.key = 'mlflow.parentRunId'"
        )
    }
    # statnn: CNN stages; ff, adam, sgd (and ng_gnn): learning to optimize
    models = ("mlp", "mlp_perm", "ng_gnn", "ng_gnn@probes", "ws_kan", "dwsnet", "statnn", "ff", "adam", "sgd")
    assert children == {f"{m}-seed{s}" for m in models for s in (0, 1)}
    keys = {r[0] for r in con.execute("select key from params")} | {
        r[0] for r in con.execute("select key from metrics")
    }
    assert {"train.ng_gnn:probes.probe_features", "ng_gnn:probes.test_acc_mean"} <= keys  # MLflow refuses "@"
    steps = con.execute("select count(*) from metrics where key = 'val_acc'").fetchone()[0]
    assert steps == (4 + 4 * 2 + 2 * 2) * 2  # SIREN 4 runs + KAN-INR 8 runs + adaptation 4 runs, x 2 epochs
    steps = con.execute("select count(*) from metrics where key = 'val_r2'").fetchone()[0]
    # KAN classifier 8 runs + forward task (WS-KAN) 2 runs + CNN zoos (3 + 2 models) x 2 seeds, x 2 epochs
    assert steps == (4 * 2 + 1 * 2 + 5 * 2) * 2
    for task in ("inr", "classifier"):
        assert f"kan_zoo@{task}" in names and f"kan_graphs@{task}" in names
    for task in ("inr", "classifier"):
        assert f"kan_train@{task}" in names
    assert "kan_forward" in names
    for task, metric in (("kan_inr", "acc_mean"), ("kan_classifier", "tau_mean"), ("kan_inr_forward", "r2_mean")):
        assert "ws_kan" in metrics[task] and all(metric in m for m in metrics[task].values())
    assert set(metrics["kan_classifier"]) == {"mlp", "mlp_perm", "ng_gnn", "ws_kan"}
    assert -1.0 <= metrics["kan_inr_forward_position_only_reference"]["test_r2_mean"] <= 1.0
    assert "WS-KAN" in md and "Kendall" in md
    assert (project / "reports" / "figures" / "kan_learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    # editing: every editor's test MSE (on 24 of the 48 training INRs) beside the unedited INRs' MSE
    edit = metrics["inr_editing"]
    assert set(edit) == {"dwsnet", "ng_gnn"}
    for m in edit.values():
        assert 0.0 < m["mse_mean"] < 1.0 and m["n_seeds"] == 2 and m["n_params"] > 0
    assert 0.0 < metrics["inr_editing_no_edit_reference"]["test_mse_mean"] < 1.0
    run = json.loads((project / "data" / "edit" / "dwsnet_seed0.json").read_text())
    assert run["n_train"] == 24 and run["n_test"] == 16 and len(run["history"]) == 2
    assert len(run["examples"]["edited"]) == 6 and len(run["examples"]["edited"][0]) == 28
    assert "INR editing" in md and "no edit" in md
    assert (project / "reports" / "figures" / "editing_examples.png").read_bytes()[:4] == b"\x89PNG"
    tags = {r[0] for r in con.execute("select key from tags")}
    assert {"git_commit", "data_version"} <= tags

    t0 = time.time()
    res = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "didn't change" in res.stdout or "up to date" in res.stdout
    assert time.time() - t0 < 15, f"no-op repro took {time.time() - t0:.1f} s (first run {first:.0f} s)"

    # a changed training param reruns train and report only
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    res = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True, timeout=120)
    assert "train" in res.stdout and "zoo:" not in res.stdout
    params["train"]["epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    def stale_after_touching(rel: str) -> set[str]:
        """Stages ``dvc status`` calls stale after a comment is added to file ``rel``."""
        path = project / rel
        text = path.read_text()
        path.write_text(text + "\n# changed\n")
        res = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True, timeout=120)
        path.write_text(text)
        return set(json.loads(res.stdout))

    assert stale_after_touching("params.yaml") == set()
    batching = stale_after_touching("pipeline/graphs/store.py")  # imported by train through pipeline.runs
    assert {"graphs", "train", "edit", "kan_train@inr", "kan_forward", "report"} <= batching
    assert not {"zoo", "kan_zoo@inr"} & batching
    assert {"zoo", "edit", "graphs"} <= stale_after_touching("pipeline/zoo/siren.py")
    assert stale_after_touching("pipeline/published_results.yaml") == {"report"}
