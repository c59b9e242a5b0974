"""Trained metanetworks are kept (safetensors + model card), logged to MLflow, and applied to
nets they never saw, from Python (``pipeline.models.load``) and from the command line
(``python -m stages.predict``)."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from pipeline.config import load_params
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet, read_graph_dir, write_graph_dir
from pipeline.io import CorruptFileError, read_json, save_tensors
from pipeline.saved import CARD_KEY, load, read_card
from pipeline.train import Classification, Regression, evaluate, model_inputs
from pipeline.weightspace.normalize import invert_stats
from tests.conftest import REPO, run_stage, siren_params, write_params, write_tiny_graphs

MODELS = ["mlp", "ng_gnn", "ng_t"]


def _as_regression(graphs: Path) -> Path:
    """The tiny graphs with a float target per net (a stand-in for a classifier's accuracy)."""
    meta, sets = read_graph_dir(graphs, ("train", "val", "test"))
    meta = meta | {"kind": "regression", "n_targets": 1}
    sets = {s: dataclasses.replace(gs, y=torch.sin(gs.net_id.float()) * 0.3 + 0.5) for s, gs in sets.items()}
    write_graph_dir(graphs, sets, meta)
    return graphs


def _recomputed_test_metrics(saved, graphs: Path, objective) -> dict[str, float]:
    test = GraphSet.load(graphs / "test.safetensors")
    return evaluate(saved.module, model_inputs(test, graph_template(saved.spec), saved.module.input_kind), objective)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One seed of three models trained by the real ``train`` stage on a local Ray cluster, a
    regression run, and a small SIREN zoo the models never saw (the real ``zoo`` stage)."""
    import ray

    from stages import fit, zoo

    tmp = tmp_path_factory.mktemp("saved")
    graphs = write_tiny_graphs(tmp / "graphs")
    over = {
        "train": {"models": MODELS, "seeds": [0], "epochs": 2, "ng_t": {"hidden": 8, "layers": 3, "heads": 2}},
        "zoo": {"hidden": [8, 8], "steps": 10},
        "data": {"n_train": 8, "n_val": 4, "n_test": 4},
    }
    params = load_params(write_params(tmp / "params.yaml", over))
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        results = fit.run(params, "train", graphs=graphs, out=tmp / "train")
        reg_graphs = _as_regression(write_tiny_graphs(tmp / "reg_graphs"))
        reg_params = dataclasses.replace(params, train=dataclasses.replace(params.train, models=["ng_gnn"]))
        reg = fit.run(reg_params, "train", graphs=reg_graphs, out=tmp / "reg_train")
        zoo.run(params, "zoo", tmp / "new_zoo")
    finally:
        ray.shutdown()
    return tmp, params, results, reg


def test_every_run_keeps_its_best_weights_and_reproduces_its_test_metric(trained):
    tmp, _, results, reg = trained
    for r in results:
        path = tmp / "train" / r["model_file"]
        assert path.name == f"{r['model']}_seed0.safetensors"
        saved = load(tmp / "train" / f"{r['model']}_seed0")  # the run's stem, as the CLI takes it
        assert saved.card["model"] == r["model"] and saved.card["test"] == r["test"]
        again = _recomputed_test_metrics(saved, tmp / "graphs", Classification(10))
        # the same evaluate() (same batch size, one thread) on the same weights and nets: same order
        assert again["acc"] == r["test"]["acc"], r["model"]
        assert again["loss"] == pytest.approx(r["test"]["loss"], rel=1e-6)
    (r,) = reg
    saved = load(tmp / "reg_train" / r["model_file"])
    obj = saved.card["objective"]
    assert obj["kind"] == "regression"
    objective = Regression(torch.tensor(obj["mean"]), torch.tensor(obj["std"]))
    again = _recomputed_test_metrics(saved, tmp / "reg_graphs", objective)
    assert again["r2"] == pytest.approx(r["test"]["r2"], abs=1e-6)
    # predict() returns targets in their own units: its MSE on the test nets is the run's
    test = GraphSet.load(tmp / "reg_graphs" / "test.safetensors")
    raw = invert_stats(test.to_params(graph_template(saved.spec)), saved.spec, saved.card["graphs"]["norm_stats"])
    pred = saved.predict(raw).flatten()
    assert float((pred - test.y).square().mean()) == pytest.approx(r["test"]["mse"], rel=1e-4)


def test_the_model_file_is_the_mlflow_runs_model(trained):
    from mlflow.tracking import MlflowClient

    tmp, params, results, _ = trained
    client = MlflowClient(params.mlflow.tracking_uri)
    for r in results:
        files = [a.path for a in client.list_artifacts(r["mlflow_run_id"], "model")]
        assert files == [f"model/{r['model_file']}"]
        # artifacts live next to the SQLite store, not in the directory the stage ran in
        uri = client.get_run(r["mlflow_run_id"]).info.artifact_uri
        assert uri.startswith((tmp / "mlartifacts").as_uri())
        stored = Path(uri.removeprefix("file://")) / "model" / r["model_file"]
        assert stored.read_bytes() == (tmp / "train" / r["model_file"]).read_bytes()


def test_predict_cli_applies_a_model_to_a_zoo_it_never_saw(trained):
    from pipeline.predict import zoo_nets

    tmp, _, _, _ = trained
    out = tmp / "preds.csv"
    proc = run_stage("predict", ["--run", str(tmp / "train" / "ng_t_seed0"), "--zoo", str(tmp / "new_zoo"),
                                 "--out", str(out)], cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    spec, params, manifest = zoo_nets(tmp / "new_zoo")
    assert [int(r["net_id"]) for r in rows] == [int(m["net_id"]) for m in manifest] and len(rows) == 16
    expected = load(tmp / "train" / "ng_t_seed0.safetensors").predict(params).argmax(1).tolist()
    assert [int(r["predicted_label"]) for r in rows] == expected
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["label"] in {str(d) for d in range(10)} for r in rows)


def test_a_mismatched_layout_or_a_missing_or_foreign_file_is_named(trained, tmp_path):
    tmp, _, _, _ = trained
    saved = load(tmp / "train" / "ng_gnn_seed0")
    spec16, other = siren_params([16], range(3))
    with pytest.raises(ValueError, match=r"layout this model was trained on \(layers \[2, 8, 8, 1\]\)"):
        saved.predict(other)
    proc = run_stage("predict", ["--run", str(tmp / "train" / "nfn_seed0"), "--zoo", str(tmp / "new_zoo"),
                                 "--out", str(tmp_path / "p.csv")], cwd=REPO)  # fmt: skip
    assert proc.returncode == 2 and "nfn_seed0.safetensors: no such model file" in proc.stderr
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(FileNotFoundError, match="not a zoo"):
        from pipeline.predict import predictions_table

        predictions_table(saved, tmp_path)
    # a safetensors file without a card, and a card whose model does not fit the weights
    save_tensors(tmp_path / "plain.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(CorruptFileError, match="plain.safetensors: not a metazoo model file"):
        load(tmp_path / "plain.safetensors")
    card = read_card(tmp / "train" / "ng_gnn_seed0.safetensors")
    card["settings"]["hidden"] = 16
    state = {k: v for k, v in saved.module.state_dict().items()}
    save_tensors(tmp_path / "bad.safetensors", state, metadata={CARD_KEY: json.dumps(card)})
    with pytest.raises(CorruptFileError, match="bad.safetensors: the weights do not fit"):
        load(tmp_path / "bad.safetensors")


def test_a_run_whose_model_file_is_gone_runs_again(trained, caplog):
    import ray

    from stages import fit

    tmp, params, results, _ = trained
    before = read_json(tmp / "train" / "mlp_seed0.json")
    (tmp / "train" / "mlp_seed0.safetensors").unlink()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        caplog.set_level(logging.INFO)
        fit.run(params, "train", graphs=tmp / "graphs", out=tmp / "train")
    finally:
        ray.shutdown()
    assert "train: 3 runs, 2 kept from an earlier invocation, running 1" in caplog.text
    assert (tmp / "train" / "mlp_seed0.safetensors").exists()
    # the same run again (seed, data, one thread, this machine): the same order, the same numbers
    assert read_json(tmp / "train" / "mlp_seed0.json")["test"] == before["test"]
