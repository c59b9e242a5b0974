"""Per-epoch resume: a run killed at epoch k of n continues from epoch k, byte-identical on CPU.

Each run sends its whole training state after every epoch to the driver, which keeps it in
``<out>/checkpoints/<run fingerprint>.safetensors`` until the run's result supersedes it. A
restarted driver, or a worker the driver retries, resumes from there. Exact comparisons below
are order-safe: the interrupted and the uninterrupted run execute the same operations in the
same order on one machine with one thread; only the point of interruption differs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import load_params
from pipeline.io import load_state, read_json, save_state
from pipeline.runs import CHECKPOINTS, GraphData, TaskContext
from pipeline.saved import load
from pipeline.tasks.job import fit_job
from pipeline.tasks.prediction import PREDICTION
from pipeline.train import TrainSettings
from tests.conftest import run_stage, write_params, write_tiny_graphs
from tests.test_scaleout import _popen_stage, comparable

SAVED: list[dict] = []


class _Capturing(TaskContext):
    """A task context outside Ray that keeps every checkpoint, stored and read back from disk."""

    def checkpoint(self, state: dict) -> None:
        path = Path(os.environ["CKPT_DIR"]) / f"{len(SAVED)}.safetensors"
        save_state(path, state)
        SAVED.append(load_state(path))


@pytest.mark.parametrize("model", ["mlp", "ng_gnn"])
def test_a_run_resumed_from_any_epoch_ends_identical(tmp_path: Path, monkeypatch, model: str):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path))
    SAVED.clear()
    params = load_params(write_params(tmp_path / "params.yaml"))
    data = GraphData.load(write_tiny_graphs(tmp_path / "graphs"))
    settings = TrainSettings(epochs=4, batch_size=16, lr=1e-2, weight_decay=1e-4, warmup_steps=2, grad_clip=1.0)
    cfg = params.train.settings(model)
    if hasattr(cfg, "dropout"):
        cfg = dataclasses.replace(cfg, dropout=0.2)  # the global generator matters too
    full = fit_job(data, model, cfg, 0, _Capturing("k", 1, "cpu"), settings, "sign_flip", PREDICTION)
    assert [s["epoch"] for s in SAVED] == [1, 2, 3, 4]
    for state in SAVED[:3]:
        ctx = TaskContext("k", 1, "cpu", resume=state)
        resumed = fit_job(data, model, cfg, 0, ctx, settings, "sign_flip", PREDICTION)
        assert comparable(resumed | {"weights": None}) == comparable(full | {"weights": None})
        assert resumed["weights"].keys() == full["weights"].keys()
        for k, v in full["weights"].items():
            assert torch.equal(resumed["weights"][k], v), k  # same ops, same order: same bytes
    # a run from scratch with another seed differs: the comparison above can fail
    other = fit_job(data, model, cfg, 1, TaskContext("k", 1, "cpu"), settings, "sign_flip", PREDICTION)
    assert other["history"][-1]["train_loss"] != full["history"][-1]["train_loss"]


def _weights(run_json: Path) -> dict[str, torch.Tensor]:
    return load(run_json.with_suffix(".safetensors")).module.state_dict()


def _reference(tmp_path: Path, graphs: Path, params: Path) -> tuple[dict, dict]:
    out = tmp_path / "reference"
    res = run_stage("train", ["--params", str(params), "--graphs", str(graphs), "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return comparable(read_json(out / "mlp_seed0.json")), _weights(out / "mlp_seed0.json")


def _wait_for_checkpoint(out: Path, proc, min_epoch: int = 3, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for f in (out / CHECKPOINTS).glob("*.safetensors") if (out / CHECKPOINTS).exists() else []:
            try:
                epoch = int(load_state(f)["epoch"])
            except Exception:  # being replaced right now
                continue
            if epoch >= min_epoch:
                return epoch
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared before the run ended")


@pytest.mark.slow
def test_a_killed_driver_and_a_killed_worker_resume_from_their_last_epoch(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs", sizes={"train": 1024, "val": 64, "test": 64})
    over = {"train": {"models": ["mlp"], "seeds": [0], "epochs": 120}, "ray": {"num_cpus": 1, "max_retries": 2}}
    params = write_params(tmp_path / "params.yaml", over)
    expected, expected_weights = _reference(tmp_path, graphs, params)
    out = tmp_path / "train"
    args = ["--params", str(params), "--graphs", str(graphs), "--out", str(out)]

    # 1. the driver (and its local Ray cluster) killed mid-run
    proc = _popen_stage("train", args, tmp_path, tmp_path / "log1")
    _wait_for_checkpoint(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "mlp_seed0.json").exists(), "the run should have been killed before it finished"
    saved = int(load_state(next((out / CHECKPOINTS).glob("*.safetensors")))["epoch"])

    # 2. a new driver resumes after that epoch; its worker is killed mid-run and retried
    proc = _popen_stage("train", args, tmp_path, tmp_path / "log2")
    _wait_for_checkpoint(out, proc, min_epoch=saved + 3)
    killed = _kill("ray::fit_job")
    assert killed is not None, "no worker was seen training"
    assert proc.wait(timeout=300) == 0, (tmp_path / "log2").read_text()[-3000:]
    log = (tmp_path / "log2").read_text()
    assert f"mlp-seed0: resumed after epoch {saved}" in log
    assert "retry 1/2" in log and log.count("mlp-seed0: resumed after epoch") == 2, log[-3000:]

    assert comparable(read_json(out / "mlp_seed0.json")) == expected
    got = _weights(out / "mlp_seed0.json")
    assert all(torch.equal(got[k], v) for k, v in expected_weights.items())
    assert not list((out / CHECKPOINTS).glob("*.safetensors"))  # superseded by the result


def _kill(title: str) -> int | None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith(title):
                p.kill()
                return p.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.slow
def test_the_event_actor_killed_mid_stage_loses_no_run_and_no_epoch(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    graphs = write_tiny_graphs(tmp_path / "graphs", sizes={"train": 1024, "val": 64, "test": 64})
    epochs = 60
    over = {"train": {"models": ["mlp"], "seeds": [0], "epochs": epochs}, "ray": {"num_cpus": 1}}
    params = write_params(tmp_path / "params.yaml", over)
    out = tmp_path / "train"
    proc = _popen_stage(
        "train", ["--params", str(params), "--graphs", str(graphs), "--out", str(out)], tmp_path, tmp_path / "log"
    )
    _wait_for_checkpoint(out, proc)
    assert _kill("ray::_QueueActor") is not None, "no event actor was seen"
    assert proc.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    assert "train: live events lost" in (tmp_path / "log").read_text()
    assert len(read_json(out / "mlp_seed0.json")["history"]) == epochs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metazoo")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'mlp-seed0'")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(1, epochs + 1))  # the epochs before and after the loss, once each


@pytest.mark.parametrize("kind", ["ff", "ng_gnn"])
def test_meta_training_resumed_from_any_checkpoint_ends_identical(tmp_path: Path, kind: str):
    """Learning to optimize: the meta-training state after every outer step, stored and read
    back, continues to the same losses and optimizer weights (same ops, same order)."""
    from pipeline.tasks.l2o import MetaSettings, meta_train
    from tests.test_l2o import _optimizers, _task

    settings = MetaSettings(outer_steps=6, unroll=2, horizon=4, n_optimizees=2, lr=1e-2, scale=0.05, grad_clip=1.0)
    saved: list[dict] = []

    def keep(state: dict) -> None:
        save_state(tmp_path / f"{len(saved)}.safetensors", state)
        saved.append(load_state(tmp_path / f"{len(saved)}.safetensors"))

    opt = _optimizers()[kind]
    full = meta_train(opt, _task(), settings, seed=0, on_checkpoint=keep)
    weights = {k: v.clone() for k, v in opt.state_dict().items()}
    assert [s["epoch"] for s in saved] == [1, 2, 3, 4, 5, 6] and len(full) == 6
    for state in saved[:-1]:
        again = _optimizers()[kind]  # a fresh build: the weights come from the checkpoint
        assert meta_train(again, _task(), settings, seed=0, resume=state) == full
        assert all(torch.equal(v, weights[k]) for k, v in again.state_dict().items())


@pytest.mark.slow
def test_an_l2o_run_resumed_mid_meta_training_ends_identical(tmp_path: Path, monkeypatch):
    from pipeline.tasks.l2o import l2o_one, load_data, optimizer_config, settings_from

    monkeypatch.setenv("CKPT_DIR", str(tmp_path))
    SAVED.clear()
    c = load_params(write_params(tmp_path / "params.yaml")).l2o
    data, settings, config = load_data(c, 0), settings_from(c), optimizer_config(c, "ng_gnn")
    full = l2o_one(data, "ng_gnn", config, 0, _Capturing("k", 1, "cpu"), settings)
    assert len(SAVED) >= 2
    resumed = l2o_one(data, "ng_gnn", config, 0, TaskContext("k", 1, "cpu", resume=SAVED[0]), settings)
    drop = {"wall_seconds", "weights", "card"}
    strip = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in full["history"]]
    assert [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in resumed["history"]] == strip
    assert {k: v for k, v in resumed.items() if k not in drop | {"history"}} == {
        k: v for k, v in full.items() if k not in drop | {"history"}
    }
    assert all(torch.equal(resumed["weights"][k], v) for k, v in full["weights"].items())
