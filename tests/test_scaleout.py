"""Scale-out on real Ray and real MLflow: two nodes, faults, job submission, a tracking server.

Everything runs on this machine: ``ray.cluster_utils.Cluster`` nodes, a ``ray start --head``
subprocess and an ``mlflow server`` on 127.0.0.1 with free ports. Only the processes a test
started are stopped (never ``ray stop``, which would stop every cluster on the machine).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ConfigError, load_params
from pipeline.distributed import TaskResources, TasksFailed, check_resources
from pipeline.io import read_json
from pipeline.provenance import project_hash
from pipeline.zoo.store import shard_name, write_shard
from tests.conftest import REPO, run_stage, write_params, write_tiny_graphs

pytestmark = pytest.mark.slow

TIMING = {"wall_seconds", "seconds_per_epoch", "node_id", "mlflow_run_id", "device", "worker"}


def comparable(run: dict) -> dict:
    """A run result without what may differ between two identical runs (timings, placement)."""
    out = {k: v for k, v in run.items() if k not in TIMING}
    out["history"] = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in run["history"]]
    return json.loads(json.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(token: str, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL, every process whose command line contains ``token``."""
    import psutil

    def matching() -> list:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if token in " ".join(p.info["cmdline"] or []):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    procs = matching()
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive + matching():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def assert_zoo_equals_reference(params_path: Path, zoo: Path) -> None:
    """Every stored shard is byte-identical to the same shard fitted in this process, without Ray."""
    from pipeline.zoo.family import fit_here
    from stages.zoo import plan_zoo

    plan = plan_zoo(load_params(params_path))
    ref = zoo.parent / f"{zoo.name}_reference"
    for k in range(len(plan.shards)):
        p, extras = fit_here(plan, k)
        write_shard(ref / shard_name(k), p, plan.specs[k], extras, plan.fingerprints[k])
        got = (zoo / "shards" / shard_name(k)).read_bytes()
        # same shard, chunks and thread count on this machine: Ray (nodes, retries) only changes placement
        assert got == (ref / shard_name(k)).read_bytes(), f"{shard_name(k)} differs from an uninterrupted one-node fit"


def _train_settings(params):
    from pipeline.train import TrainSettings

    tc = params.train
    return TrainSettings(tc.epochs, tc.batch_size, tc.lr, tc.weight_decay, tc.warmup_steps, tc.grad_clip)


# --------------------------------------------------------------------------------------------
# A run that raises; resources the cluster lacks
# --------------------------------------------------------------------------------------------


def _raising_worker(data, model, config, seed, ctx, settings, augment, kind):
    """The training job, broken on purpose for seed 1."""
    from pipeline.tasks.job import fit_job

    if seed == 1:
        raise ValueError("run broken on purpose")
    return fit_job(data, model, config, seed, ctx, settings, augment, kind)


def test_a_run_that_raises_is_named_and_every_other_run_is_kept(tmp_path: Path, caplog):
    import ray
    from mlflow.tracking import MlflowClient

    from pipeline.runs import GraphData, run_training
    from pipeline.tasks.prediction import PREDICTION
    from stages import fit

    graphs = write_tiny_graphs(tmp_path / "graphs")
    over = {"train": {"models": ["mlp"], "seeds": [0, 1, 2], "epochs": 2}}
    params = load_params(write_params(tmp_path / "params.yaml", over))
    out = tmp_path / "train"
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        # a cluster without what the tasks ask for fails before any task runs, naming the resource
        no_gpu = dataclasses.replace(params, ray=dataclasses.replace(params.ray, gpus_per_task=0.5))
        with pytest.raises(ConfigError, match=r"\(GPU\).*ray.gpus_per_task"):
            fit.run(no_gpu, "train", graphs=graphs, out=out)
        with pytest.raises(ConfigError, match=r"\(memory\)"):
            check_resources(TaskResources(num_cpus=1, memory=10**15))
        with pytest.raises(ConfigError, match=r"\(CPU\)"):
            check_resources(TaskResources(num_cpus=64))
        assert not list(out.glob("*.json"))

        tc = params.train
        data = GraphData.load(graphs)
        with pytest.raises(TasksFailed, match="mlp seed 1") as failed:
            run_training(
                params, data, out, stage="train", kind=PREDICTION, models=tc.models, seeds=tc.seeds,
                settings=_train_settings(params), model_configs=tc.settings_by_model(), augment=tc.augment,
                threads=1, worker=_raising_worker,
            )  # fmt: skip
        assert "ValueError: run broken on purpose" in str(failed.value)
        assert sorted(p.name for p in out.glob("*_seed*.json")) == ["mlp_seed0.json", "mlp_seed2.json"]
        assert not (out / "results.json").exists()
        client = MlflowClient(params.mlflow.tracking_uri)
        exp = client.get_experiment_by_name(params.mlflow.experiment)
        status = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
        assert status["mlp-seed1"] == "FAILED" and status["mlp-seed0"] == status["mlp-seed2"] == "FINISHED"

        kept = {s: read_json(out / f"mlp_seed{s}.json") for s in (0, 2)}
        caplog.set_level(logging.INFO)
        caplog.clear()
        results = fit.run(params, "train", graphs=graphs, out=out)  # the bug fixed: only the failed run runs
        assert "train: 3 runs, 2 kept from an earlier invocation, running 1" in caplog.text
        assert [r["seed"] for r in results] == [0, 1, 2]
        for s in (0, 2):
            assert read_json(out / f"mlp_seed{s}.json") == kept[s]
        assert len(read_json(out / "results.json")["runs"]) == 3
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------------------------
# Two nodes, no shared disk
# --------------------------------------------------------------------------------------------


def _forbid_workspace() -> None:
    """Worker setup hook: opening anything under ``$METAZOO_FORBIDDEN_DIR`` raises, for Python's
    ``open`` (audit hook) and for safetensors (whose files are opened in Rust)."""
    import os
    import sys

    import safetensors
    import safetensors.torch

    root = os.environ["METAZOO_FORBIDDEN_DIR"]

    def check(path) -> None:
        if isinstance(path, str | bytes | os.PathLike) and os.path.abspath(os.fsdecode(path)).startswith(root):
            raise PermissionError(f"a task opened {os.fsdecode(path)} on the driver's disk")

    def audit(event: str, args: tuple) -> None:
        if event == "open" and args:
            check(args[0])

    sys.addaudithook(audit)
    original = safetensors.safe_open

    def guarded_safe_open(filename, *args, **kwargs):
        check(filename)
        return original(filename, *args, **kwargs)

    safetensors.safe_open = guarded_safe_open
    safetensors.torch.safe_open = guarded_safe_open


def test_two_nodes_run_one_stage_with_identical_results_and_no_shared_disk(tmp_path: Path):
    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from pipeline.io import load_tensors
    from pipeline.runs import GraphData, TaskContext
    from pipeline.tasks.job import fit_job
    from pipeline.tasks.prediction import PREDICTION
    from stages import fit, zoo
    from stages import graphs as graphs_stage

    workspace = tmp_path / "ws"
    workspace.mkdir()
    over = {"train": {"models": ["mlp", "statnn"], "seeds": [0, 1], "epochs": 2}, "zoo": {"shard_size": 20}}
    params_path = write_params(workspace / "params.yaml", over)
    params = load_params(params_path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(
            address=cluster.address,
            runtime_env={
                "worker_process_setup_hook": _forbid_workspace,
                # the hook is unpickled before the job's sys.path is set up: make `tests` importable
                "env_vars": {"METAZOO_FORBIDDEN_DIR": str(workspace), "PYTHONPATH": str(REPO)},
            },
        )
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2

        @ray.remote
        def peek(path: str) -> str:
            return Path(path).read_text()

        with pytest.raises(ray.exceptions.RayTaskError, match="on the driver's disk"):
            ray.get(peek.remote(str(params_path)))  # the guard itself works

        zoo.run(params, "zoo", workspace / "zoo")
        graphs_stage.run(params, workspace / "zoo", workspace / "graphs")
        results = fit.run(params, "train", graphs=workspace / "graphs", out=workspace / "train")
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert len({r["node_id"] for r in results}) == 2, "the runs should have used both nodes"
    client = MlflowClient(params.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    tagged = {r.info.run_name: r.data.tags.get("node_id") for r in client.search_runs([exp.experiment_id])}
    for r in results:
        assert tagged[f"{r['model']}-seed{r['seed']}"] == r["node_id"]

    # byte-identical to one node: the zoo shard by shard, every run's numbers
    assert_zoo_equals_reference(params_path, workspace / "zoo")
    data = GraphData.load(workspace / "graphs")
    configs = params.train.settings_by_model()
    for r in results:
        ctx = TaskContext(f"{r['model']}-seed{r['seed']}", 1, "cpu")
        ref = fit_job(
            data, r["model"], configs[r["model"]], r["seed"], ctx, _train_settings(params), params.train.augment,
            PREDICTION,
        )  # fmt: skip
        weights, _ = ref.pop("weights"), ref.pop("card")
        # the same run (seed, data, one thread) on this machine: the node only changes placement
        kept = load_tensors(workspace / "train" / r["model_file"])  # the trained weights, bytes too
        assert kept.keys() == weights.keys() and all(torch.equal(kept[k], v) for k, v in weights.items())
        same = {k: r[k] for k in ("fingerprint", "code_version", "model_file")}
        assert comparable(r) == comparable(ref | same)


def test_an_autoscaling_cluster_is_waited_for_until_a_node_fits():
    """``ray.wait_for_nodes_s``: a node that joins while the stage waits is used; none joining in
    time is refused, naming the resource and the wait."""
    import threading

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        ray.init(address=cluster.address)
        with pytest.raises(ConfigError, match=r"\(CPU\).*after waiting 1 s"):
            check_resources(TaskResources(num_cpus=3), wait_s=1.0, poll_s=0.2)
        outcome: list = []

        def stage() -> None:
            try:
                check_resources(TaskResources(num_cpus=3), wait_s=120.0, poll_s=0.2)
                outcome.append("ran")
            except ConfigError as e:
                outcome.append(e)

        waiting = threading.Thread(target=stage)
        waiting.start()
        time.sleep(2.0)
        assert waiting.is_alive() and not outcome  # still waiting: no node fits yet
        cluster.add_node(num_cpus=3)  # the autoscaler's node
        waiting.join(timeout=120)
        assert outcome == ["ran"]
    finally:
        ray.shutdown()
        cluster.shutdown()


# --------------------------------------------------------------------------------------------
# Faults: a worker killed mid-shard, a driver killed mid-training
# --------------------------------------------------------------------------------------------


def _popen_stage(stage: str, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    from tests.conftest import entry_args

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    return subprocess.Popen(
        [sys.executable, "-m", *entry_args(stage), *args],
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_a_worker_killed_while_fitting_a_shard_is_retried_and_the_zoo_is_identical(tmp_path: Path):
    import psutil

    over = {"zoo": {"steps": 300, "shard_size": 40}, "ray": {"num_cpus": 1, "max_retries": 3}}
    params = write_params(tmp_path / "params.yaml", over)
    out = tmp_path / "zoo"
    proc = _popen_stage("zoo", ["--params", str(params), "--out", str(out)], tmp_path, tmp_path / "log")
    killed = None
    deadline = time.time() + 180
    while killed is None and proc.poll() is None and time.time() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if (p.info["cmdline"] or [""])[0].startswith("ray::fit_shard_task"):
                    p.kill()
                    killed = p.pid
                    break
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.05)
    assert killed is not None, "no worker was seen fitting a shard"
    assert proc.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    assert "died" in (tmp_path / "log").read_text()  # Ray saw the worker die mid-task and retried it
    assert len(list((out / "shards").glob("shard_*.safetensors"))) == 2
    assert_zoo_equals_reference(params, out)


def test_a_killed_driver_resumes_training_with_only_the_missing_runs(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs")
    seeds = list(range(6))
    over = {"train": {"models": ["mlp"], "seeds": seeds, "epochs": 40}, "ray": {"num_cpus": 1}}
    params = write_params(tmp_path / "params.yaml", over)
    out = tmp_path / "train"
    args = ["--params", str(params), "--graphs", str(graphs), "--out", str(out)]
    proc = _popen_stage("train", args, tmp_path, tmp_path / "log")
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("mlp_seed*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # only the driver writes: nothing arrives after it died
    kept = {p.name: read_json(p)["test"] for p in out.glob("mlp_seed*.json")}
    assert 2 <= len(kept) < len(seeds), f"the driver should have been killed mid-way, found {len(kept)} runs"

    res = run_stage("train", args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"6 runs, {len(kept)} kept from an earlier invocation, running {6 - len(kept)}" in res.stderr
    runs = read_json(out / "results.json")["runs"]
    assert [r["seed"] for r in runs] == seeds
    for name, test in kept.items():
        assert read_json(out / name)["test"] == test
    # the run the killed driver left open is reopened by its fingerprint tag, not made twice
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metazoo")
    children = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'mlp-seed%'")
    assert sorted(r.info.run_name for r in children) == [f"mlp-seed{s}" for s in seeds]
    assert {r.info.status for r in children} == {"FINISHED"}


# --------------------------------------------------------------------------------------------
# A `ray start` cluster, `ray job submit`, an `mlflow server` watched while runs train
# --------------------------------------------------------------------------------------------


def _wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _http_up(url: str) -> bool:
    """The server answers at all (the Ray dashboard answers 401 without its token)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def test_job_submitted_to_a_ray_start_cluster_tracks_live_to_an_mlflow_server(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    gcs, dash, mlflow_port = free_port(), free_port(), free_port()
    marker = f"--port={gcs}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", marker, "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", '--resources={"metazoo_test_head": 1}'],
        stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    store = tmp_path / "mlflow"
    server = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}.db", "--default-artifact-root", str(store / "artifacts")],
        stdout=(tmp_path / "mlflow.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{mlflow_port}"
    try:
        _wait_for(lambda: _http_up(f"http://127.0.0.1:{dash}/api/version"), 120, "the Ray head's dashboard")
        _wait_for(lambda: _http_up(f"{uri}/health"), 120, "the MLflow server")

        # an own cluster by default even with a `ray start` cluster running; "auto" joins it
        probe = (
            "import ray, sys; from pipeline.config import RayConfig; from pipeline.distributed import init_ray\n"
            "r = init_ray(RayConfig(address=sys.argv[1], num_cpus=1)); print('HEAD' if 'metazoo_test_head' in r "
            "else 'OWN', int(r['CPU']))"
        )
        for address, expect in (("auto", "HEAD 2"), ("", "OWN 1")):
            res = subprocess.run([sys.executable, "-c", probe, address], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=180)  # fmt: skip
            assert res.returncode == 0 and expect in res.stdout, res.stdout + res.stderr[-2000:]

        # the job: code shipped with --working-dir, outputs written by the job's driver on the head
        job_dir = tmp_path / "job"
        for item in ("pipeline", "stages"):
            shutil.copytree(REPO / item, job_dir / item, ignore=shutil.ignore_patterns("__pycache__"))
        out = tmp_path / "results"
        over = {"train": {"models": ["mlp"], "seeds": [0, 1], "epochs": 150}, "mlflow": {"tracking_uri": uri}}
        params = write_params(tmp_path / "params.yaml", over)
        raw = yaml.safe_load(params.read_text())
        raw["mlflow"]["tracking_uri"] = uri  # write_params points MLflow at a SQLite file
        params.write_text(yaml.safe_dump(raw))
        p = f"--params {params}"
        entry = (
            f"python -m stages.zoo {p} --out {out}/zoo && "
            f"python -m stages.graphs {p} --zoo {out}/zoo --out {out}/graphs && "
            f"python -m stages.fit train {p} --graphs {out}/graphs --out {out}/train"
        )
        submit = subprocess.Popen(
            ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(job_dir),
             "--", "bash", "-c", entry],
            stdout=(tmp_path / "job.log").open("w"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

        # per-epoch metrics of a run arrive while it is still RUNNING
        client = MlflowClient(uri)

        def live_run():
            exp = client.get_experiment_by_name("metazoo")
            if exp is None:
                return None
            for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                if run.data.tags.get("mlflow.parentRunId") and len(
                    client.get_metric_history(run.info.run_id, "val_acc")
                ):
                    return run
            return None

        seen = _wait_for(live_run, 400, "a child run with per-epoch metrics while it runs")
        assert submit.wait(timeout=400) == 0, (tmp_path / "job.log").read_text()[-3000:]
        assert "succeeded" in (tmp_path / "job.log").read_text()

        runs = read_json(out / "train" / "results.json")["runs"]
        assert [(r["model"], r["seed"]) for r in runs] == [("mlp", 0), ("mlp", 1)]
        finished = client.get_run(seen.info.run_id)
        assert finished.info.status == "FINISHED"
        assert len(client.get_metric_history(seen.info.run_id, "val_acc")) == 150
        exp = client.get_experiment_by_name("metazoo")
        names = {r.info.run_name for r in client.search_runs([exp.experiment_id])}
        assert {"zoo", "graphs", "train", "mlp-seed0", "mlp-seed1"} <= names
    finally:
        server.terminate()
        for token in (marker, f"={gcs}", f":{gcs}"):  # `ray start`, then the head's services and workers
            stop_processes(token)
        head.wait(timeout=30)
        from ray._common.utils import get_ray_address_file

        address_file = Path(get_ray_address_file(None))  # what `ray stop` clears: no later "auto" joins a dead head
        if address_file.exists() and address_file.read_text().strip().endswith(f":{gcs}"):
            address_file.unlink()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


# --------------------------------------------------------------------------------------------
# A worker node whose Python has Ray and the dependencies but not the project
# --------------------------------------------------------------------------------------------


def _bare_python(venv: Path) -> Path:
    """A virtual environment that sees this interpreter's site-packages as a plain path (every
    dependency imports) without running their ``.pth`` files: the project's editable install is
    not on its path, so ``import pipeline`` fails there unless the job ships the code."""
    import site

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _ray_start(python: Path, args: list[str], cwd: Path, log: Path, **env_vars: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")} | env_vars
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
    return subprocess.Popen(
        [python, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
         "start", "--block", "--node-ip-address=127.0.0.1", *ports, *args],
        cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def test_a_node_without_the_project_runs_zoo_and_train_tasks_with_identical_bytes(tmp_path: Path, monkeypatch):
    from pipeline.io import load_tensors
    from pipeline.runs import GraphData, TaskContext
    from pipeline.tasks.job import fit_job
    from pipeline.tasks.prediction import PREDICTION

    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # nodes and drivers share this user's token file

    bare = _bare_python(tmp_path / "venv")
    imports = "import ray, torch, torch_geometric, mlflow\ntry:\n import pipeline\nexcept ImportError: print('BARE')"
    probe = subprocess.run([bare, "-c", imports], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "BARE", probe.stdout + probe.stderr  # dependencies yes, the project no

    gcs = free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    head = _ray_start(
        Path(sys.executable),
        [
            "--head",
            f"--port={gcs}",
            "--num-cpus=0",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
        ],
        tmp_path,
        tmp_path / "head.log",
    )  # fmt: skip  (no CPU on the head: every task runs on the bare node)
    # a node without the fused KAN kernel (as one without a compiler): its KAN shards are refused up front
    node = _ray_start(
        bare, [f"--address=127.0.0.1:{gcs}", "--num-cpus=2"], elsewhere, tmp_path / "node.log", METAZOO_KAN_KERNEL="0"
    )
    try:
        workspace = tmp_path / "ws"
        workspace.mkdir()
        over = {
            "train": {"models": ["mlp", "ng_gnn"], "seeds": [0], "epochs": 2},
            "zoo": {"shard_size": 20},
            "ray": {"address": f"127.0.0.1:{gcs}"},
        }
        params = write_params(workspace / "params.yaml", over)
        p = ["--params", str(params)]
        node_log = tmp_path / "node.log"
        _wait_for(lambda: "Ray runtime started" in node_log.read_text(), 120, "the bare node to join")

        # without the shipped code the bare node cannot even unpickle a pipeline task
        unshipped = (
            "import ray, sys; ray.init(address=sys.argv[1]); from pipeline.provenance import worker_environment\n"
            "try:\n ray.get(ray.remote(worker_environment).remote()); print('RAN')\n"
            "except Exception as e: print('FAILED', type(e).__name__, e)"
        )
        # (a driver run from the checkout would lend it to same-machine workers: Ray puts the
        # driver's directory on their path; a real node has no such copy)
        res = subprocess.run([sys.executable, "-c", unshipped, f"127.0.0.1:{gcs}"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert "FAILED" in res.stdout and "No module named 'pipeline'" in res.stdout, res.stdout + res.stderr[-2000:]

        for stage, args in (
            ("zoo", [*p, "--out", str(workspace / "zoo")]),
            ("graphs", [*p, "--zoo", str(workspace / "zoo"), "--out", str(workspace / "graphs")]),
            ("train", [*p, "--graphs", str(workspace / "graphs"), "--out", str(workspace / "train")]),
        ):
            res = run_stage(stage, args, workspace, timeout=600)
            assert res.returncode == 0, f"{stage}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        kan = run_stage("kan_zoo@inr", [*p, "--out", str(workspace / "kan")], workspace, timeout=600)
        assert kan.returncode == 2, kan.stdout[-2000:] + kan.stderr[-3000:]
        assert "cannot fit these shards" in kan.stderr and "kan_backend 'torch'" in kan.stderr, kan.stderr[-3000:]
        assert not list((workspace / "kan" / "shards").glob("*.safetensors"))  # refused before any fitting
    finally:
        for token in (f"--port={gcs}", f":{gcs}"):  # `ray start`, the nodes' services and workers
            stop_processes(token)
        for proc in (node, head):
            proc.wait(timeout=30)

    # the zoo's shards byte for byte, and every run, as fitted and trained in this process
    assert_zoo_equals_reference(params, workspace / "zoo")
    loaded = load_params(params)
    data = GraphData.load(workspace / "graphs")
    configs = loaded.train.settings_by_model()
    for r in read_json(workspace / "train" / "results.json")["runs"]:
        assert r["worker"]["code"] == project_hash()  # the task reported the driver's code
        ctx = TaskContext(f"{r['model']}-seed{r['seed']}", 1, "cpu")
        ref = fit_job(
            data, r["model"], configs[r["model"]], r["seed"], ctx, _train_settings(loaded), loaded.train.augment,
            PREDICTION,
        )  # fmt: skip
        weights = ref.pop("weights")
        kept = load_tensors(workspace / "train" / r["model_file"])
        assert kept.keys() == weights.keys() and all(torch.equal(kept[k], v) for k, v in weights.items())
        assert r["test"] == ref["test"] and r["history"][-1]["train_loss"] == ref["history"][-1]["train_loss"]


def _mlflow_server(port: int, store: Path, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}", "--default-artifact-root", str(store.parent / "artifacts")],
        stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    _wait_for(lambda: _http_up(f"http://127.0.0.1:{port}/health"), 120, "the MLflow server")
    return server


def test_one_mlflow_run_per_fingerprint_reopened_not_duplicated(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from pipeline.config import MLflowConfig
    from pipeline.tracking import LiveRuns

    cfg = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(cfg.tracking_uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    rows = [{"epoch": e, "val_acc": e / 10} for e in (1, 2, 3)]
    first = LiveRuns(cfg, parent, exp, git="g")
    first.start("mlp-seed0", {"lr": 0.1}, {}, uid="fp-a")
    for row in rows[:2]:
        first.epoch("mlp-seed0", row)
    # the driver dies here; the next invocation finds the open run by its tag
    second = LiveRuns(cfg, parent, exp, git="g")
    second.start("mlp-seed0", {"lr": 0.1}, {}, uid="fp-a")
    run_id = first.run_ids["mlp-seed0"]
    assert second.run_ids["mlp-seed0"] == run_id
    assert second.finish("mlp-seed0", {"test_acc": 0.7}, {}, rows) == run_id
    assert not second.errors
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"
    # one run per fingerprint, even once closed (a close whose reply was lost); another is another run
    third = LiveRuns(cfg, parent, exp, git="g")
    third.start("mlp-seed0", {"lr": 0.1}, {}, uid="fp-a")
    third.start("mlp-seed1", {"lr": 0.1}, {}, uid="fp-b")
    assert third.run_ids["mlp-seed0"] == run_id != third.run_ids["mlp-seed1"]
    assert third.finish("mlp-seed0", {"test_acc": 0.7}, {}, rows) == run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]
    # the actor queue may deliver epoch rows out of order, or twice: each step is logged once
    for row in (rows[2], rows[0], rows[1], rows[0]):
        third.epoch("mlp-seed1", row)
    steps = [m.step for m in client.get_metric_history(third.run_ids["mlp-seed1"], "val_acc")]
    assert sorted(steps) == [1, 2, 3]


def test_an_mlflow_server_that_goes_away_costs_no_result(tmp_path: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # our own retries only, to keep the test short
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    graphs = write_tiny_graphs(tmp_path / "graphs")
    seeds = [0, 1, 2, 3]
    over = {"train": {"models": ["mlp"], "seeds": seeds, "epochs": 60}, "ray": {"num_cpus": 1}}
    params = write_params(tmp_path / "params.yaml", over)
    raw = yaml.safe_load(params.read_text())
    raw["mlflow"] |= {"tracking_uri": uri, "retries": 2}
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "train"
    args = ["--params", str(params), "--graphs", str(graphs), "--out", str(out)]
    server = _mlflow_server(port, tmp_path / "mlflow.db", tmp_path / "mlflow.log")
    try:
        proc = _popen_stage("train", args, tmp_path, tmp_path / "log")
        _wait_for(lambda: list(out.glob("mlp_seed*.json")) or proc.poll() is not None, 180, "a first finished run")
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies while runs train
        server.wait()
        assert proc.wait(timeout=300) != 0
        log = (tmp_path / "log").read_text()
        assert "MLflow logging failed" in log and "run the stage again" in log, log[-3000:]
        assert sorted(p.name for p in out.glob("mlp_seed*.json")) == [f"mlp_seed{s}.json" for s in seeds]
        assert not all(read_json(out / f"mlp_seed{s}.json").get("mlflow_run_id") for s in seeds)

        server = _mlflow_server(port, tmp_path / "mlflow.db", tmp_path / "mlflow.log")
        res = run_stage("train", args, tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "4 runs, 4 kept from an earlier invocation, running 0" in res.stderr
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("metazoo")
        runs = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'mlp-seed%'")
        assert sorted(r.info.run_name for r in runs) == [f"mlp-seed{s}" for s in seeds]  # reopened, not duplicated
        for r in runs:
            assert r.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
            assert sorted(steps) == list(range(1, 61)), r.info.run_name  # every epoch once
            assert read_json(out / f"{r.info.run_name.replace('-', '_')}.json")["mlflow_run_id"] == r.info.run_id
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
