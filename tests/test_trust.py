"""The cache never lies, nothing finished is lost, bad input is refused before any work.

* Content-addressed data: a graphs folder records every split file's SHA-256 and a run's data
  version hashes them; a zoo shard's fingerprint covers the bytes of the images it fits.
* One generation per output folder; one writer per folder (a second driver is refused at once,
  naming the holder); runs and shards that leave the plan are retired, never deleted, and come
  back without recomputation.
* Bad params, graph files and tracking URIs are refused (or redacted) with a message naming them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, load_params
from pipeline.graphs.store import GraphSet, read_graph_dir, write_graph_dir
from pipeline.io import RETIRED, CorruptFileError, FolderBusy, folder_lock, read_json, staged_dir, tensors_hash
from pipeline.runs import GraphData
from tests.conftest import REPO, run_stage, siren_params, write_params, write_tiny_graphs

SPLITS = ("train", "val", "test")

# --------------------------------------------------------------------------------------------
# content-addressed data versions
# --------------------------------------------------------------------------------------------


def test_tensors_hash_covers_values_dtype_shape_and_names():
    a = torch.arange(6, dtype=torch.float32)
    base = tensors_hash({"x": a, "y": a.long()})
    assert tensors_hash({"y": a.long(), "x": a.clone()}) == base  # same content, any key order
    assert tensors_hash({"x": a * 0.5, "y": a.long()}) != base  # halved values
    assert tensors_hash({"x": a.double(), "y": a.long()}) != base  # another dtype
    assert tensors_hash({"x": a.view(2, 3), "y": a.long()}) != base  # another shape
    assert tensors_hash({"z": a, "y": a.long()}) != base  # another name


def test_graph_data_version_changes_with_any_byte_of_the_splits(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs")
    before = GraphData.load(graphs).version
    assert GraphData.load(graphs).version == before
    meta, sets = read_graph_dir(graphs, SPLITS)
    relabelled = dataclasses.replace(sets["train"], y=sets["train"].y.flip(0))  # same counts, same meta fields
    write_graph_dir(graphs, sets | {"train": relabelled}, {k: v for k, v in meta.items() if k != "files"})
    assert GraphData.load(graphs).version != before


def test_a_split_file_from_another_write_is_refused_naming_it(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs")
    other = write_tiny_graphs(tmp_path / "other", sizes={"train": 40, "val": 16, "test": 16})
    # a killed writer without generations: a new train file beside the old meta.json
    os.replace(other / "train.safetensors", graphs / "train.safetensors")
    with pytest.raises(CorruptFileError, match=r"train\.safetensors: not the file .*meta\.json recorded"):
        GraphData.load(graphs)
    (graphs / "val.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"val\.safetensors: missing"):
        read_graph_dir(graphs, ("val",))


def test_a_folder_write_that_fails_leaves_the_old_generation_whole(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs")
    before = {p.name: p.read_bytes() for p in graphs.iterdir()}
    with pytest.raises(RuntimeError, match="killed"), staged_dir(graphs) as tmp:
        (tmp / "train.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert {p.name: p.read_bytes() for p in graphs.iterdir()} == before
    assert not list(tmp_path.glob(".graphs.staging-*"))
    # a writer killed by SIGKILL leaves its staging folder: the next writer removes it
    (tmp_path / ".graphs.staging-dead").mkdir()
    write_tiny_graphs(graphs)
    assert not list(tmp_path.glob(".graphs.staging-*"))
    GraphData.load(graphs)


def test_changed_image_bytes_change_every_zoo_shard_fingerprint(tmp_path: Path, monkeypatch):
    import pipeline.zoo.build as siren_family
    import stages.zoo as zoo_stage
    from pipeline.data import load_images

    params = load_params(write_params(tmp_path / "params.yaml"))
    before = zoo_stage.plan_zoo(params)
    assert zoo_stage.plan_zoo(params).fingerprints == before.fingerprints
    images, labels = load_images(params.data.source)
    # a new data release or another normalisation: same indices, same labels, other bytes
    monkeypatch.setattr(siren_family, "load_images", lambda source: (images * 0.5, labels))
    after = zoo_stage.plan_zoo(params)
    assert [s[0] for s in after.shards] == [s[0] for s in before.shards]  # the same images for the same nets
    assert not set(after.fingerprints) & set(before.fingerprints)


def test_run_fingerprint_carries_library_versions():
    import torch_geometric

    from pipeline.runs import library_versions

    assert library_versions() == {"torch": torch.__version__, "torch_geometric": torch_geometric.__version__}


def test_every_training_section_passes_compile_and_it_enters_the_run_fingerprint():
    """``compile`` of each training section reaches the loop (``TrainSettings.of``), and a compiled
    run (other CPU bytes) never stands for an eager one: its fingerprint differs."""
    import dataclasses

    from pipeline.config import params_from_dict
    from pipeline.runs import Job, run_fingerprint
    from pipeline.train import TrainSettings

    on = {"train": {"compile": True}, "edit": {"compile": True}, "adapt": {"compile": True}}
    on |= {"kan": {"train": {"compile": True}}, "cnn": {"train": {"compile": True}}}
    for p, want in ((params_from_dict({}), False), (params_from_dict(on), True)):
        for section in (p.train, p.edit, p.adapt, p.kan.train, p.cnn.train):
            s = TrainSettings.of(section)
            assert s.compile is want and s.epochs == section.epochs and s.grad_clip == section.grad_clip
    eager = TrainSettings.of(params_from_dict({}).train)
    compiled = dataclasses.replace(eager, compile=True)
    from pipeline.models.mlp import Settings

    job = Job("mlp", 0, Settings())
    fps = {run_fingerprint("train", job, dataclasses.asdict(s), "v", "cpu") for s in (eager, compiled)}
    assert len(fps) == 2


# --------------------------------------------------------------------------------------------
# nothing finished is lost
# --------------------------------------------------------------------------------------------


def _shard(tmp: Path, k: int, fp: str) -> None:
    from pipeline.zoo.store import shard_name, write_shard

    spec, params = siren_params([4], range(3 * k, 3 * k + 3))
    ids = torch.arange(3 * k, 3 * k + 3)
    write_shard(tmp / shard_name(k), params, spec, {"net_id": ids}, fp)


def test_shards_leaving_the_plan_are_retired_and_come_back_unfitted(tmp_path: Path):
    from pipeline.zoo.store import plan_shard_dir, shard_name

    shards = tmp_path / "shards"
    shards.mkdir()
    for k, fp in enumerate(["a", "b", "c"]):
        _shard(shards, k, fp)
    original = {k: (shards / shard_name(k)).read_bytes() for k in range(3)}
    assert plan_shard_dir(shards, ["a", "b", "c"]) == []
    assert plan_shard_dir(shards, ["a", "b"]) == []  # a smaller plan: shard 2 is retired, not deleted
    assert not (shards / shard_name(2)).exists()
    assert (shards / RETIRED / "c" / shard_name(2)).read_bytes() == original[2]
    assert plan_shard_dir(shards, ["a", "x", "c"]) == [1]  # slot 1 of another plan; slot 2 comes back
    assert (shards / RETIRED / "b" / shard_name(1)).read_bytes() == original[1]
    assert (shards / shard_name(2)).read_bytes() == original[2]
    assert plan_shard_dir(shards, ["a", "b", "c"]) == []  # the first plan again: nothing to refit
    assert {k: (shards / shard_name(k)).read_bytes() for k in range(3)} == original


@pytest.mark.slow
def test_train_runs_are_kept_retired_brought_back_and_rerun_on_relabelled_graphs(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs")
    out = tmp_path / "train"

    def train(seeds: list[int]) -> str:
        over = {"train": {"models": ["mlp"], "seeds": seeds, "epochs": 1}}
        params = write_params(tmp_path / "params.yaml", over)
        res = run_stage("train", ["--params", str(params), "--graphs", str(graphs), "--out", str(out)], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout + res.stderr  # the library logs to stderr

    assert "2 runs, 0 kept from an earlier invocation, running 2" in train([0, 1])
    first = {s: read_json(out / f"mlp_seed{s}.json") for s in (0, 1)}
    assert "1 runs, 1 kept from an earlier invocation, running 0" in train([0])
    retired = out / RETIRED / first[1]["fingerprint"]
    assert not (out / "mlp_seed1.json").exists() and (retired / "mlp_seed1.safetensors").exists()
    log = train([0, 1])
    assert "2 runs, 2 kept from an earlier invocation, running 0" in log and "brought back" in log
    assert read_json(out / "mlp_seed1.json")["test"] == first[1]["test"]

    meta, sets = read_graph_dir(graphs, SPLITS)
    sets["train"] = dataclasses.replace(sets["train"], y=(sets["train"].y + 1) % 10)
    write_graph_dir(graphs, sets, {k: v for k, v in meta.items() if k != "files"})
    assert "2 runs, 0 kept from an earlier invocation, running 2" in train([0, 1])  # relabelled: a rerun
    for s in (0, 1):  # the runs on the old labels are retired under their fingerprints
        assert (out / RETIRED / first[s]["fingerprint"] / f"mlp_seed{s}.json").exists()


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = (
        "import sys, time\nfrom pipeline.io import folder_lock\n"
        f"with folder_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_writer_of_a_folder_is_refused_naming_the_holder(tmp_path: Path):
    out = tmp_path / "train"
    holder = _hold_lock(out)
    try:
        with pytest.raises(FolderBusy, match=rf"{out} is being written by host \S+ pid {holder.pid}"):
            with folder_lock(out):
                pass
        # the stage's driver exits at once, before any work, and the files there are untouched
        graphs = write_tiny_graphs(tmp_path / "graphs")
        out.mkdir()
        (out / "mlp_seed7.json").write_text("{}")
        params = write_params(tmp_path / "params.yaml", {"train": {"models": ["mlp"], "seeds": [0]}})
        t0 = time.time()
        res = run_stage("train", ["--params", str(params), "--graphs", str(graphs), "--out", str(out)], tmp_path)
        assert res.returncode == 1 and f"pid {holder.pid}" in res.stderr and "Traceback" not in res.stderr
        assert time.time() - t0 < 60 and [p.name for p in out.iterdir()] == ["mlp_seed7.json"]
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(out):  # the holder died: the operating system released its lock
        pass


@pytest.mark.slow
def test_two_processes_opening_a_fresh_sqlite_store_at_once_both_succeed(tmp_path: Path):
    code = (
        "import sys\nfrom pipeline.config import MLflowConfig\nfrom pipeline import tracking\n"
        "print(tracking.setup(MLflowConfig(tracking_uri=sys.argv[1], experiment='e')))\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-2000:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1  # one experiment


def test_credentials_in_uris_are_redacted_before_logging(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline.config import MLflowConfig

    assert tracking.redact("postgresql://user:s3cr%t@db.example:5432/x") == "postgresql://user:***@db.example:5432/x"
    assert tracking.redact("http://host:5000") == "http://host:5000"
    cfg = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {"mlflow.tracking_uri": "postgresql://user:secret@host/db", "train.lr": 0.1}
    with tracking.stage_run(cfg, "s", logged, {}) as run:
        run_id = run.info.run_id
    stored = MlflowClient(cfg.tracking_uri).get_run(run_id).data.params
    assert stored["mlflow.tracking_uri"] == "postgresql://user:***@host/db"


# --------------------------------------------------------------------------------------------
# bad input, refused up front with the key and what is wrong
# --------------------------------------------------------------------------------------------

BAD_PARAMS = [
    ({"train": {"models": []}}, r"train\.models: needs at least 1 item"),
    ({"edit": {"models": []}}, r"edit\.models: needs at least 1 item"),
    ({"cnn": {"train": {"heterogeneous_models": []}}}, r"cnn\.train\.heterogeneous_models: needs at least 1"),
    ({"train": {"seeds": []}}, r"train\.seeds: needs at least 1 item"),
    ({"zoo": {"hidden": [100000, 100000]}}, r"zoo\.hidden\[0\]: 100000 is out of range"),
    ({"train": {"batch_size": 10**12}}, r"train\.batch_size: 1000000000000 is out of range"),
    ({"train": {"ng_gnn": {"hidden": 10**7}}}, r"train\.ng_gnn\.hidden: 10000000 is out of range"),
    (
        {"data": {"n_train": 4600, "n_val": 500, "n_test": 500}},
        r"data\.n_train: n_train \+ n_val \+ n_test = 5600 exceeds the 5000",
    ),
    (
        {"kan": {"inr": {"n_train": 4900, "n_val": 100, "n_test": 100}}},
        r"kan\.inr\.n_train: .* exceeds the 5000 images",
    ),
    ({"seed": 2**70}, r"seed: 1180591620717411303424 is out of range"),
    ({"train": {"seeds": [0, 2**40]}}, r"train\.seeds\[1\]: 1099511627776 is out of range"),
]


@pytest.mark.parametrize("over,message", BAD_PARAMS, ids=[m.split(":")[0].replace("\\", "") for _, m in BAD_PARAMS])
def test_bad_params_are_refused_naming_the_key(tmp_path: Path, over: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        load_params(write_params(tmp_path / "params.yaml", over))


@pytest.mark.slow
def test_a_bad_param_exits_2_from_the_stage_with_one_line(tmp_path: Path):
    params = write_params(tmp_path / "params.yaml", {"train": {"models": []}})
    res = run_stage("train", ["--params", str(params), "--out", str(tmp_path / "train")], tmp_path)
    assert res.returncode == 2 and "train.models: needs at least 1 item" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "train").exists()


def _tiny_set() -> GraphSet:
    from pipeline.graphs.neural_graph import graph_template

    spec, params = siren_params([4], range(3))
    return GraphSet.from_params(params, graph_template(spec), torch.tensor([1, 2, 3]), torch.arange(3))


BAD_GRAPH_SETS = {
    "short y": (lambda g: dataclasses.replace(g, y=g.y[:2]), r"y has 2 entries, expected 3"),
    "edge out of range": (
        lambda g: dataclasses.replace(g, edge_index=g.edge_index.clone().index_fill_(1, torch.tensor([0]), 99)),
        r"edge_index points outside its graph's nodes",
    ),
    "pointers not monotonic": (
        lambda g: dataclasses.replace(g, node_ptr=g.node_ptr[[0, 2, 1, 3]]),
        r"node_ptr is not non-decreasing",
    ),
    "pointers not from 0": (lambda g: dataclasses.replace(g, edge_ptr=g.edge_ptr + 1), r"edge_ptr must run from 0"),
    "float ids": (lambda g: dataclasses.replace(g, net_id=g.net_id.float()), r"net_id has dtype torch.float32"),
    "short node_layer": (
        lambda g: dataclasses.replace(g, node_layer=g.node_layer[:-1]),
        r"node_layer has \d+ entries, expected",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPH_SETS))
def test_inconsistent_graph_files_are_refused_naming_the_file(tmp_path: Path, case: str):
    from safetensors.torch import save_file

    damage, message = BAD_GRAPH_SETS[case]
    g = damage(_tiny_set())
    tensors = {f.name: getattr(g, f.name).contiguous() for f in dataclasses.fields(g)}
    tensors["node_out"] = tensors["node_out"].to(torch.uint8)
    save_file(tensors, str(tmp_path / "train.safetensors"))  # bypasses GraphSet: a damaged or foreign file
    with pytest.raises(CorruptFileError, match=rf"train\.safetensors: {message}"):
        GraphSet.load(tmp_path / "train.safetensors")


def test_splits_with_different_feature_widths_are_refused(tmp_path: Path):
    graphs = write_tiny_graphs(tmp_path / "graphs")
    meta, sets = read_graph_dir(graphs, SPLITS)
    wide = dataclasses.replace(sets["val"], x=torch.cat([sets["val"].x, sets["val"].x], 1))
    write_graph_dir(graphs, sets | {"val": wide}, {k: v for k, v in meta.items() if k != "files"})
    with pytest.raises(CorruptFileError, match=r"val\.safetensors: node features of width \d+, train has \d+"):
        GraphData.load(graphs)


# --------------------------------------------------------------------------------------------
# published zoos: what ``python -m stages.import_zoo`` refuses
# --------------------------------------------------------------------------------------------


def _import(src: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stages.import_zoo", "--format", "dwsnets", "--src", str(src), "--out", str(out)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _published(root: Path, with_splits: bool = True) -> Path:
    from tests.test_published import _write_dwsnets

    _write_dwsnets(root, n_per=1, with_splits=with_splits)
    return root


def _edit_splits(src: Path, change) -> None:
    import json

    listing = json.loads((src / "splits.json").read_text())
    change(listing)
    (src / "splits.json").write_text(json.dumps(listing))


@pytest.mark.slow
def test_import_refuses_test_leakage_fractional_labels_and_links_out(tmp_path: Path):
    src = _published(tmp_path / "src")
    _edit_splits(src, lambda s: s["test"]["path"].append(s["train"]["path"][0]) or s["test"]["label"].append(3))
    res = _import(src, tmp_path / "zoo")
    assert res.returncode == 1 and "listed in test and train (one INR may be in one split only)" in res.stderr

    src = _published(tmp_path / "src2")
    _edit_splits(src, lambda s: s["train"]["label"].__setitem__(0, 3.7))
    res = _import(src, tmp_path / "zoo")
    assert res.returncode == 1 and "label 3.7 from the listing is not an integer class" in res.stderr

    src = _published(tmp_path / "src3", with_splits=False)
    elsewhere = tmp_path / "elsewhere" / "mnist_png_training_5_0" / "checkpoints"
    elsewhere.mkdir(parents=True)
    first = sorted(src.rglob("model_final.pth"))[0]
    os.replace(first, elsewhere / "model_final.pth")
    first.symlink_to(elsewhere / "model_final.pth")  # a link out of the source folder
    res = _import(src, tmp_path / "zoo")
    assert res.returncode == 1 and "outside the source directory" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "zoo").exists()


@pytest.mark.slow
def test_import_replaces_an_earlier_import_whole_and_never_another_folder(tmp_path: Path):
    from pipeline.zoo.store import load_zoo

    big, small = _published(tmp_path / "big"), tmp_path / "small"
    from tests.test_published import _write_dwsnets

    out = tmp_path / "zoo"
    assert _import(big, out).returncode == 0
    (out / "shards" / "shard_00009.safetensors").write_bytes(b"stale")  # left by some earlier import
    _write_dwsnets(small, n_per=1, with_splits=True)
    _edit_splits(small, lambda s: [s[k][c].pop() for k in ("train", "test") for c in ("path", "label")])
    res = _import(small, out)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in (out / "shards").iterdir()] == ["shard_00000.safetensors"]
    assert len(load_zoo(out).records) == 2

    fitted = tmp_path / "fitted"
    fitted.mkdir()
    (fitted / "notes.txt").write_text("mine")
    res = _import(small, fitted)
    assert res.returncode == 1 and "not empty and not an earlier import" in res.stderr
    assert [p.name for p in fitted.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "flag,value,message",
    [("--val-fraction", "1.5", "--val-fraction: 1.5 is out of range"), ("--src", "/nonexistent", "is not a directory")],
)
@pytest.mark.slow
def test_import_flags_are_checked_before_any_work(tmp_path: Path, flag: str, value: str, message: str):
    args = {"--src": str(tmp_path), "--val-fraction": "0.1"} | {flag: value}
    cmd = [sys.executable, "-m", "stages.import_zoo", "--format", "dwsnets", "--out", str(tmp_path / "z")]
    res = subprocess.run([*cmd, *(x for kv in args.items() for x in kv)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr and not (tmp_path / "z").exists()
