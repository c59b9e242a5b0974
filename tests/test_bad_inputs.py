"""More bad inputs, each refused with a message naming the file (or key) and no traceback:
published CNN zoos, model files, zoo folders and command-line flags (see also
``tests/test_trust.py`` for params, graph files and published INR zoos)."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.io import CorruptFileError, read_json, write_json
from pipeline.zoo.cnn import CNNArch, cnn_spec, init_cnns, small_cnn_zoo_arch
from pipeline.zoo.published_cnn import read_small_cnn_zoo, read_wild_park
from tests.conftest import REPO, write_tiny_graphs
from tests.test_published_cnn import write_small_cnn_zoo


def _cli(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------------
# published CNN zoos
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_zoo(tmp_path: Path) -> Path:
    rows = [{"step": 86, "test_accuracy": a, "config.activation": "relu"} for a in (0.9, 0.8)]
    write_small_cnn_zoo(tmp_path, init_cnns(small_cnn_zoo_arch(), [1, 2]), rows)
    read_small_cnn_zoo(tmp_path)  # the undamaged folder reads
    return tmp_path


def _rewrite_layout(root: Path, change) -> None:
    with (root / "layout.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    change(rows)
    with (root / "layout.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _rewrite_metrics(root: Path, rows: list[dict]) -> None:
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


SMALL_ZOO_DAMAGE = {
    "missing layout": (lambda r: (r / "layout.csv").unlink(), r"layout\.csv: missing or unreadable"),
    "metrics not gzip": (
        lambda r: (r / "metrics.csv.gz").write_text("step,test_accuracy\n86,0.9\n"),
        r"metrics\.csv\.gz: not a gzip-compressed CSV file",
    ),
    "range disagrees with shape": (
        lambda r: _rewrite_layout(r, lambda rows: rows[1].update(end_idx=int(rows[1]["end_idx"]) + 1)),
        r"layout\.csv: .* spans \[\d+, \d+\) but its shape \(16,\) holds 16 values",
    ),
    "NaN accuracy": (
        lambda r: _rewrite_metrics(r, [{"step": 86, "test_accuracy": a} for a in ("nan", 0.8)]),
        r"metrics\.csv\.gz row 1: test_accuracy nan is not a finite accuracy",
    ),
    "accuracy above 1": (
        lambda r: _rewrite_metrics(r, [{"step": 86, "test_accuracy": a} for a in (0.9, 87.5)]),
        r"metrics\.csv\.gz row 2: test_accuracy 87\.5 is not a finite accuracy in \[0, 1\]",
    ),
}


@pytest.mark.parametrize("case", sorted(SMALL_ZOO_DAMAGE))
def test_a_damaged_small_cnn_zoo_is_named(small_zoo: Path, case: str):
    damage, message = SMALL_ZOO_DAMAGE[case]
    damage(small_zoo)
    with pytest.raises(CorruptFileError, match=message):
        read_small_cnn_zoo(small_zoo)


@pytest.mark.parametrize("acc,message", [(float("nan"), "nan is not a finite"), (1.7, "1.7 is not a finite")])
def test_a_wild_park_checkpoint_with_an_impossible_accuracy_is_named(tmp_path: Path, acc: float, message: str):
    arch = CNNArch((4,), (3,), (2,), "relu", (), 1, 10)
    params = init_cnns(arch, [0])
    state = {t.name: params[t.name][0] for t in cnn_spec(arch).tensors}
    (tmp_path / "run0").mkdir()
    torch.save({"state_dict": state, "config": arch.to_dict(), "test_accuracy": acc}, tmp_path / "run0" / "3.pt")
    with pytest.raises(CorruptFileError, match=rf"run0/3\.pt: test_accuracy {message}"):
        read_wild_park(tmp_path)


# --------------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------------


def _model_file(tmp_path: Path) -> Path:
    from pipeline.graphs.neural_graph import graph_template
    from pipeline.models import build_model, settings_type
    from pipeline.runs import GraphData
    from pipeline.saved import model_card, save_model
    from pipeline.train import Classification, data_shape, forward_spec_from_meta
    from pipeline.weightspace.spec import ParamSpec

    data = GraphData.load(write_tiny_graphs(tmp_path / "graphs"))
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    shape = data_shape(data.splits["train"], template, 10, forward_spec_from_meta(data.meta))
    cfg = settings_type("mlp")(hidden=16, layers=2)
    model = build_model("mlp", cfg, shape)
    card = model_card("mlp", cfg, shape, data.meta, Classification(10))
    return save_model(tmp_path / "mlp_seed0.safetensors", model.state_dict(), card)


def _recard(path: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    from pipeline.saved import CARD_KEY, read_card

    card = read_card(path)
    new = change(card)
    save_file(load_file(str(path)), str(path), metadata={CARD_KEY: new if isinstance(new, str) else json.dumps(new)})
    return path


def _settings(**kw):
    return lambda card: card | {"settings": card["settings"] | kw}


MODEL_FILE_DAMAGE = {
    "width far too large": (_settings(hidden=10**7), r"settings\.hidden: 10000000 is out of range"),
    "negative width": (_settings(hidden=-5), r"settings\.hidden: -5 is out of range"),
    "unknown setting": (_settings(hiden=3), r"settings\.hiden: unknown key"),
    "unknown model": (lambda c: c | {"model": "resnet"}, r"model: 'resnet' is not one of"),
    "card not JSON": (lambda c: "{not json", r"model card is not valid JSON"),
    "weights of another width": (
        _settings(hidden=32),
        r"the weights do not fit the model its card describes: .*\(card: \(32",
    ),
}


@pytest.mark.parametrize("case", sorted(MODEL_FILE_DAMAGE))
def test_a_bad_model_file_is_refused_before_any_module_is_built(tmp_path: Path, case: str):
    from pipeline.saved import load

    change, message = MODEL_FILE_DAMAGE[case]
    path = _recard(_model_file(tmp_path), change)
    with pytest.raises(CorruptFileError, match=message):
        load(path)


@pytest.mark.slow
def test_predict_names_a_bad_model_file_in_one_line(tmp_path: Path):
    path = _recard(_model_file(tmp_path), _settings(hidden=-5))
    res = _cli("stages.predict", "--run", str(path), "--zoo", str(tmp_path), "--out", str(tmp_path / "p.csv"))
    assert res.returncode == 2 and "settings.hidden: -5 is out of range" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "p.csv").exists()


# --------------------------------------------------------------------------------------------
# zoo folders and command-line flags
# --------------------------------------------------------------------------------------------


@pytest.fixture
def zoo_dir(tmp_path: Path) -> Path:
    from tests.test_published import _write_dwsnets

    _write_dwsnets(tmp_path / "src", n_per=1, with_splits=True)
    res = _cli("stages.import_zoo", "--format", "dwsnets", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "z"))
    assert res.returncode == 0, res.stderr
    return tmp_path / "z"


def _edit_manifest(zoo: Path, change) -> None:
    from pipeline.zoo.store import read_rows, write_rows

    rows = read_rows(zoo / "manifest.csv")
    change(rows)
    write_rows(zoo / "manifest.csv", rows)


OTHER_SPEC = cnn_spec(small_cnn_zoo_arch()).to_dict()
ZOO_DAMAGE = {
    "no zoo.json": (lambda z: (z / "zoo.json").unlink(), r"zoo\.json: cannot read JSON"),
    "manifest hash of another net": (
        lambda z: _edit_manifest(z, lambda rows: rows[0].update(sha256=rows[1]["sha256"])),
        r"shard_00000\.safetensors",
    ),
    "manifest lists a net twice": (
        lambda z: _edit_manifest(z, lambda rows: rows.append(dict(rows[0]))),
        r"manifest\.csv",
    ),
    "zoo.json spec of another layout": (
        lambda z: write_json(
            z / "zoo.json", read_json(z / "zoo.json") | {"spec": cnn_spec(small_cnn_zoo_arch()).to_dict()}
        ),
        r"shard_00000\.safetensors",
    ),
}


@pytest.mark.parametrize("case", sorted(ZOO_DAMAGE))
@pytest.mark.slow
def test_the_graphs_stage_names_a_damaged_zoo_folder(tmp_path: Path, zoo_dir: Path, case: str):
    from tests.conftest import write_params

    damage, message = ZOO_DAMAGE[case]
    damage(zoo_dir)
    params = write_params(tmp_path / "params.yaml")
    res = _cli("stages.graphs", "--params", str(params), "--zoo", str(zoo_dir), "--out", str(tmp_path / "g"))
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and __import__("re").search(message, res.stderr), res.stderr[-2000:]
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["stages.fit", "train", "--params", "no/such/params.yaml"], "cannot read the params file"),
        (["stages.zoo", "kan_zoo@bogus", "--params", "{params}", "--out", "{tmp}/o"], "unknown variant 'bogus'"),
        (["stages.zoo", "cnn_zoo@bogus", "--params", "{params}", "--out", "{tmp}/o"], "unknown variant 'bogus'"),
        (["stages.zoo", "bogus_zoo", "--params", "{params}", "--out", "{tmp}/o"], "unknown zoo stage 'bogus_zoo'"),
        (["stages.predict", "--run", "no/such/run", "--zoo", ".", "--out", "{tmp}/x.csv"], "no such model file"),
    ],
)
@pytest.mark.slow
def test_bad_command_line_input_is_one_line(tmp_path: Path, args: list[str], message: str):
    from tests.conftest import write_params

    params = write_params(tmp_path / "params.yaml")
    res = _cli(*(a.format(params=params, tmp=tmp_path) for a in args))
    assert res.returncode in (1, 2) and message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_weights_npy_with_a_pickle_is_refused(small_zoo: Path):
    np.save(small_zoo / "weights.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptFileError, match=r"weights\.npy: not a NumPy array file"):
        read_small_cnn_zoo(small_zoo)
