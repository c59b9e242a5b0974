"""The ``l2o`` stage on the tiny profile, as a user runs it: every (optimizer, seed) run, the
saved optimizers reloaded and re-run to the same numbers, resume, MLflow, the report section,
and config errors that name the key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, params_from_dict
from pipeline.io import read_json
from tests.conftest import TINY, run_stage, write_params

OPTIMIZERS = TINY["l2o"]["optimizers"]
SEEDS = TINY["l2o"]["seeds"]


@pytest.fixture(scope="module")
def l2o_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("l2o")
    params = write_params(tmp / "params.yaml")
    out = tmp / "l2o"
    res = run_stage("l2o", ["--params", str(params), "--out", str(out)], tmp)
    return {"tmp": tmp, "params": params, "out": out, "res": res}


def test_every_optimizer_and_seed_runs_and_scores_both_tasks(l2o_run):
    assert l2o_run["res"].returncode == 0, l2o_run["res"].stderr[-3000:]
    runs = read_json(l2o_run["out"] / "results.json")["runs"]
    assert sorted((r["model"], r["seed"]) for r in runs) == sorted((o, s) for o in OPTIMIZERS for s in SEEDS)
    for r in runs:
        assert set(r["test"]) == {"meta_task_loss", "meta_task_acc", "test_task_loss", "test_task_acc"}
        for task in ("meta_task", "test_task"):
            per_net = r["per_net"][task]
            assert len(per_net["test_acc"]) == TINY["l2o"]["eval_nets"]
            assert r["test"][f"{task}_acc"] == pytest.approx(sum(per_net["test_acc"]) / len(per_net["test_acc"]))
            assert len(r["curves"][task]) == TINY["l2o"]["eval_steps"]
        assert r["tasks"]["meta_task"] == "digits_offline: CNN 1 → 8 → 10, 3 x 3 stride-2 convs"
        assert r["tasks"]["test_task"] == "mnist_offline: CNN 1 → 12 → 10, 3 x 3 stride-2 convs"  # on 7 x 7 MNIST
        if r["model"] in ("adam", "sgd"):
            tried = [h["lr"] for h in r["history"]]
            assert tried == TINY["l2o"]["baseline_lrs"]
            best = min(r["history"], key=lambda h: h["train_loss"])
            assert r["lr"] == best["lr"] and r.get("model_file") is None
        else:
            assert r["lr"] is None and len(r["history"]) == TINY["l2o"]["outer_steps"]  # one row per outer step
            assert (l2o_run["out"] / r["model_file"]).exists()


def test_a_saved_optimizer_reloads_and_trains_new_nets_to_the_same_numbers(l2o_run):
    from pipeline.config import load_params
    from pipeline.tasks.l2o import eval_seeds, load_data, load_optimizer, optimize

    params = load_params(l2o_run["params"])
    data = load_data(params.l2o, params.seed)
    runs = read_json(l2o_run["out"] / "results.json")["runs"]
    for r in (r for r in runs if r["model"] in ("ng_gnn", "ff") and r["seed"] == 1):
        optimizer, card = load_optimizer(l2o_run["out"] / r["model_file"])
        assert card["test"] == r["test"] and card["model"] == r["model"]
        t = optimize(
            optimizer, data.test_task, params.l2o.eval_steps, eval_seeds(1, params.l2o.eval_nets), card["scale"]
        )
        assert t.test_acc.tolist() == pytest.approx(r["per_net"]["test_task"]["test_acc"])
        assert t.final_loss.tolist() == pytest.approx(r["per_net"]["test_task"]["final_loss"], rel=1e-5)


def test_a_rerun_runs_only_the_deleted_run_and_mlflow_has_every_run(l2o_run):
    out, tmp = l2o_run["out"], l2o_run["tmp"]
    before = read_json(out / "ff_seed0.json")
    (out / "ff_seed0.json").unlink()
    res = run_stage("l2o", ["--params", str(l2o_run["params"]), "--out", str(out)], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    n = len(OPTIMIZERS) * len(SEEDS)
    assert f"l2o: {n} runs, {n - 1} kept from an earlier invocation, running 1" in res.stderr
    again = read_json(out / "ff_seed0.json")
    assert again["test"] == before["test"]  # the same computation, run again: the same numbers
    con = sqlite3.connect(tmp / "mlflow.db")
    children = {
        r[0]
        for r in con.execute(
            "select r.name from runs r join tags t on r.run_uuid = t.run_uuid where t.key = 'mlflow.parentRunId'"
        )
    }
    assert children == {f"{o}-seed{s}" for o in OPTIMIZERS for s in SEEDS}
    keys = {r[0] for r in con.execute("select key from metrics")}
    assert {"test_test_task_acc", "test_meta_task_loss", "train_loss", "lr"} <= keys


def test_the_report_section_puts_every_optimizer_beside_the_published_numbers(l2o_run, tmp_path: Path):
    from pipeline.report import l2o

    section = l2o.section(l2o_run["out"], None, tmp_path / "figures")
    md, numbers = section.markdown, section.metrics
    assert "## Learning to optimize" in md and "different data set" in md
    for label in ("Adam (lr tuned)", "SGD + momentum (lr tuned)", "FF (per-parameter MLP)", "NG-GNN"):
        assert f"| {label} |" in md
    assert "85.91 ± 0.37 / 64.37 ± 0.34" in md  # NG-GNN's published numbers
    assert "| NG-GNN beats Adam (lr tuned) |" in md and "| NG-GNN beats FF (per-parameter MLP) |" in md
    assert "not run (`ng_t`" in md  # every claim listed
    assert set(numbers["learning_to_optimize"]) == set(OPTIMIZERS)
    ng = numbers["learning_to_optimize"]["ng_gnn"]
    runs = read_json(l2o_run["out"] / "results.json")["runs"]
    accs = [r["test"]["test_task_acc"] for r in runs if r["model"] == "ng_gnn"]
    assert ng["test_task_acc_mean"] == pytest.approx(sum(accs) / len(accs)) and ng["n_seeds"] == len(SEEDS)
    assert (tmp_path / "figures" / "l2o_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "section, message",
    [
        ({"optimizers": ["lstm"]}, "l2o.optimizers[0]: 'lstm' is not allowed"),
        ({"test_task": {"hidden": [64, 64]}}, "l2o.test_task.hidden:"),
        ({"meta_task": {"pool": 7}}, "l2o.meta_task.pool: 7 does not divide the 8-pixel side"),
        ({"meta_task": {"n_test": 1797}}, "l2o.meta_task.n_test:"),
        ({"heads": 3}, "l2o.heads: 3 does not divide graph_hidden"),
        ({"test_task": {"kind": "cnn"}}, "l2o.test_task.kind: .* read kernels up to the meta task's \\(1 x 1\\)"),
        (
            {"meta_task": {"kind": "cnn", "kernel": 3}, "test_task": {"kind": "cnn", "kernel": 5}},
            "l2o.test_task.kernel:",
        ),
        ({"outer_steps": "many"}, "l2o.outer_steps: expected int"),
        ({"unrol": 10}, "l2o.unrol: unknown key"),
    ],
)
def test_config_errors_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        params_from_dict({"l2o": section})


def test_the_shipped_profiles_are_valid():
    root = Path(__file__).resolve().parents[1]
    for name in ("params.yaml", "profiles/paper.yaml"):
        params_from_dict(yaml.safe_load((root / name).read_text()))
