"""Readers of published CNN zoos, on fixture files written here in the published layouts."""

import csv
import gzip

import numpy as np
import pytest
import torch

from pipeline.io import CorruptFileError, read_json
from pipeline.zoo.cnn import CNNArch, cnn_forward, init_cnns, small_cnn_zoo_arch
from pipeline.zoo.cnn_zoo import load_cnn_zoo
from pipeline.zoo.published_cnn import read_small_cnn_zoo, read_wild_park
from tests.conftest import run_stage, write_params


def write_small_cnn_zoo(root, params, rows):
    """``params`` (our layout) as a Small CNN Zoo: TensorFlow kernel order, one row per checkpoint."""
    names = ["conv.0.weight", "conv.0.bias", "conv.1.weight", "conv.1.bias", "conv.2.weight", "conv.2.bias"]
    tf = {n: params[n].permute(0, 3, 4, 2, 1) if params[n].dim() == 5 else params[n] for n in names}
    tf["head.weight"], tf["head.bias"] = params["head.weight"].transpose(1, 2), params["head.bias"]
    var = {"conv.0.weight": "sequential/conv2d/kernel:0", "head.weight": "sequential/dense/kernel:0"}
    cols, layout, start = [], [], 0
    for name, t in tf.items():
        n = t[0].numel()
        layout.append(
            {"varname": var.get(name, name), "start_idx": start, "end_idx": start + n, "shape": str(tuple(t.shape[1:]))}
        )
        cols.append(t.reshape(t.shape[0], -1))
        start += n
    np.save(root / "weights.npy", torch.cat(cols, dim=1).numpy())
    with (root / "layout.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(layout[0]))
        w.writeheader()
        w.writerows(layout)
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_small_cnn_zoo_reads_back_in_pytorch_order(tmp_path):
    arch = small_cnn_zoo_arch()
    params = init_cnns(arch, [1, 2, 3, 4])
    rows = [
        {"step": s, "test_accuracy": a, "config.activation": act}
        for s, a, act in ((86, 0.9, "relu"), (0, 0.1, "relu"), (86, 0.8, "tanh"), (86, 0.7, "relu"))
    ]
    write_small_cnn_zoo(tmp_path, params, rows)
    zoo = read_small_cnn_zoo(tmp_path)
    assert sorted(zoo) == [arch.name, arch.name.replace("relu", "tanh")]
    relu = zoo[arch.name]
    assert relu.arch == arch and [r["test_accuracy"] for r in relu.rows] == ["0.9", "0.7"]
    for name, v in params.items():
        torch.testing.assert_close(relu.params[name], v[[0, 3]])
    x = torch.rand(5, 1, 14, 14)
    torch.testing.assert_close(
        cnn_forward(relu.params, arch, x), cnn_forward({k: v[[0, 3]] for k, v in params.items()}, arch, x)
    )
    assert sum(len(z.rows) for z in read_small_cnn_zoo(tmp_path, step=None).values()) == 4
    np.save(tmp_path / "weights.npy", np.zeros((4, 100), dtype=np.float32))
    with pytest.raises(CorruptFileError, match="weights.npy"):
        read_small_cnn_zoo(tmp_path)


def write_wild_park(root, n_runs: int = 4) -> dict[str, list]:
    """``n_runs`` runs alternating two architectures, checkpoints at steps 10 and 20; returns
    each architecture's runs' parameters."""
    archs = [CNNArch((8, 8), (5, 3), (2, 1), "tanh", ((1, 2),)), small_cnn_zoo_arch()]
    expected = {}
    for run in range(n_runs):
        arch = archs[run % 2]
        params = init_cnns(arch, [run])
        for step in (10, 20):
            # Sequential-style key names: only their order matters
            state = {f"layers.{k}": v[0] for k, v in enumerate(params.values())}
            (root / f"run{run}").mkdir(exist_ok=True)
            torch.save(
                {"state_dict": state, "config": arch.to_dict(), "test_accuracy": 0.5 + run / 100 + step / 1000},
                root / f"run{run}" / f"{step}.pt",
            )
        expected.setdefault(arch.name, []).append(params)
    return expected


def test_wild_park_checkpoints_group_by_architecture_and_refuse_bad_files(tmp_path):
    archs = [CNNArch((8, 8), (5, 3), (2, 1), "tanh", ((1, 2),)), small_cnn_zoo_arch()]
    expected = {}
    for run, arch in enumerate(archs * 2):
        params = init_cnns(arch, [run])
        for step in (10, 20):
            # Sequential-style key names: only their order matters
            state = {f"layers.{k}": v[0] for k, v in enumerate(params.values())}
            (tmp_path / f"run{run}").mkdir(exist_ok=True)
            torch.save(
                {"state_dict": state, "config": arch.to_dict(), "test_accuracy": 0.5 + run / 10},
                tmp_path / f"run{run}" / f"{step}.pt",
            )
        expected.setdefault(arch.name, []).append(params)
    zoo = read_wild_park(tmp_path)
    assert set(zoo) == {a.name for a in archs}
    for name, ckpt in zoo.items():
        assert len(ckpt.rows) == 4 and {r["step"] for r in ckpt.rows} == {"10", "20"}
        torch.testing.assert_close(ckpt.params["conv.0.weight"][0], expected[name][0]["conv.0.weight"][0])
    (tmp_path / "run0" / "30.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="30.pt"):
        read_wild_park(tmp_path)


def test_an_imported_wild_park_zoo_is_a_cnn_zoo_split_by_run_that_the_graph_stage_reads(tmp_path):
    from stages.import_zoo import run

    src, out = tmp_path / "src", tmp_path / "zoo"
    src.mkdir()
    expected = write_wild_park(src, n_runs=10)
    summary = run("wild_park", src, out, val_fraction=0.2, seed=0, test_fraction=0.2)
    assert (
        summary["n_nets"] == 20 and summary["n_runs"] == 10 and summary["counts"] == {"train": 12, "val": 4, "test": 4}
    )
    archs, params, rows, info = load_cnn_zoo(out)  # every net checked against its stored hash
    assert info["family"] == "heterogeneous" and info["recipe"]["format"] == "wild_park"
    for arch, p, rs in zip(archs, params, rows, strict=True):
        runs = expected[arch.name]
        assert len(rs) == 2 * len(runs)
        torch.testing.assert_close(p["conv.0.weight"][::2], torch.cat([r["conv.0.weight"] for r in runs]))
    split_of_run: dict = {}
    for r in (r for rs in rows for r in rs):
        assert split_of_run.setdefault(r["run_id"], r["split"]) == r["split"]  # a run's checkpoints stay together
    # the graph stage reads it like a zoo fitted here
    res = run_stage(
        "cnn_graphs",
        ["--params", str(write_params(tmp_path / "params.yaml")), "--family", "heterogeneous", "--zoo", str(out),
         "--out", str(tmp_path / "graphs")],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_json(tmp_path / "graphs" / "meta.json")["counts"] == summary["counts"]


def test_an_import_refuses_to_replace_a_fitted_zoo(tmp_path):
    from stages.import_zoo import main

    src, out = tmp_path / "src", tmp_path / "zoo"
    src.mkdir()
    write_wild_park(src)
    out.mkdir()
    (out / "zoo.json").write_text('{"family": "heterogeneous", "recipe": {"ranges": {}}}')
    with pytest.raises(SystemExit, match="not an earlier import"):
        main(["--format", "wild_park", "--src", str(src), "--out", str(out)])
    assert (out / "zoo.json").read_text() == '{"family": "heterogeneous", "recipe": {"ranges": {}}}'
    with pytest.raises(SystemExit):
        main(["--format", "wild_park", "--src", str(src), "--out", str(tmp_path / "z"), "--test-fraction", "0.95"])


def test_an_imported_small_cnn_zoo_keeps_the_final_checkpoints_in_pytorch_order(tmp_path):
    from stages.import_zoo import run

    arch = small_cnn_zoo_arch()
    params = init_cnns(arch, list(range(6)))
    rows = [{"step": 86 if i != 2 else 0, "test_accuracy": 0.5 + i / 20} for i in range(6)]
    write_small_cnn_zoo(tmp_path, params, rows)
    summary = run("small_cnn_zoo", tmp_path, tmp_path / "zoo", val_fraction=0.2, seed=1, test_fraction=0.2)
    archs, got, manifest, info = load_cnn_zoo(tmp_path / "zoo")
    assert summary["n_nets"] == 5 and info["family"] == "homogeneous" and archs == [arch]
    kept = [0, 1, 3, 4, 5]  # step 86 only
    torch.testing.assert_close(got[0]["head.weight"], params["head.weight"][kept])
    assert [float(r["test_acc"]) for r in manifest[0]] == [0.5 + i / 20 for i in kept]
    write_small_cnn_zoo(tmp_path, params, [{"step": 86} for _ in range(6)])  # no targets
    with pytest.raises(CorruptFileError, match="without a test_accuracy"):
        run("small_cnn_zoo", tmp_path, tmp_path / "zoo2", val_fraction=0.2, seed=1, test_fraction=0.2)
    assert not (tmp_path / "zoo2").exists()
