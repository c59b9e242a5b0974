"""Loaders for the published INR data sets, on fixture files written here in their layouts."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.data import coordinate_grid
from pipeline.io import CorruptFileError
from pipeline.zoo.published import dwsnets_files, mlp_params, nfn_files, read_state_dict
from pipeline.zoo.siren import siren_forward
from pipeline.zoo.store import load_zoo
from stages.import_zoo import main, run


def _siren_module(seed: int, sizes=(2, 32, 32, 1)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return nn.Sequential(*layers)


def _reference_output(seq: nn.Sequential, coords: torch.Tensor, omega0: float, offset: float) -> torch.Tensor:
    h = coords
    for i, lin in enumerate(seq):
        h = lin(h)
        if i < len(seq) - 1:
            h = torch.sin(omega0 * h)
    return h + offset


def _write_dwsnets(root: Path, n_per: int = 2, with_splits: bool = False, label_key: bool = False) -> dict:
    """DWSNets layout: mnist_png_{training,testing}_<label>_<idx>/checkpoints/model_final.pth (seq.* keys)."""
    modules, listing = {}, {"train": {"path": [], "label": []}, "test": {"path": [], "label": []}}
    k = 0
    for part, split in (("training", "train"), ("testing", "test")):
        for label in (3, 7):
            for idx in range(n_per):
                seq = _siren_module(k)
                state = {f"seq.{i}.{p}": t for i, lin in enumerate(seq) for p, t in lin.state_dict().items()}
                if label_key:
                    state["label"] = label
                path = root / f"mnist_png_{part}_{label}_{idx}" / "checkpoints" / "model_final.pth"
                path.parent.mkdir(parents=True)
                torch.save(state, path)
                modules[str(path)] = (seq, label, split)
                listing[split]["path"].append(str(path.relative_to(root)))
                listing[split]["label"].append(label)
                k += 1
    if with_splits:
        (root / "splits.json").write_text(json.dumps(listing))
    return modules


@pytest.mark.parametrize("with_splits", [False, True])
def test_dwsnets_layout_imports_as_a_zoo_with_the_same_functions(tmp_path: Path, with_splits: bool):
    modules = _write_dwsnets(tmp_path / "src", with_splits=with_splits)
    summary = run("dwsnets", tmp_path / "src", tmp_path / "zoo", val_fraction=0.25, seed=0)
    assert summary["n_nets"] == 8 and summary["counts"] == {"train": 3, "val": 1, "test": 4}
    zoo = load_zoo(tmp_path / "zoo")  # hashes checked
    assert zoo.spec.layer_sizes == (2, 32, 32, 1) and zoo.info["recipe"]["fit"] == {
        "omega0": 30.0,
        "variant": "dwsnets",
    }
    coords = coordinate_grid(28, 28)
    files = dwsnets_files(tmp_path / "src")
    assert len(files) == 8
    for i, f in enumerate(files):
        seq, label, split = modules[str(f.path)]
        rec = zoo.records[i]
        assert rec.label == label and (rec.split == split or (split == "train" and rec.split == "val"))
        ours = siren_forward({k: v[i : i + 1] for k, v in zoo.params.items()}, zoo.spec, coords, 30.0, 0.5)[0]
        with torch.no_grad():
            torch.testing.assert_close(ours, _reference_output(seq, coords, 30.0, 0.5), rtol=1e-5, atol=1e-5)


def test_fmnist_label_entry_wins(tmp_path: Path):
    _write_dwsnets(tmp_path / "src", n_per=1, label_key=True)
    path = next((tmp_path / "src").rglob("model_final.pth"))
    state = torch.load(path, weights_only=True)
    state["label"] = 9
    torch.save(state, path)
    run("dwsnets", tmp_path / "src", tmp_path / "zoo", val_fraction=0.0, seed=0)
    zoo = load_zoo(tmp_path / "zoo")
    assert 9 in {r.label for r in zoo.records}


def test_nfn_layout_imports(tmp_path: Path):
    sizes = (2, 16, 16, 16, 1)
    ref = {}
    for label in (0, 4):
        d = tmp_path / "src" / f"randinit_smaller_{label}s"
        d.mkdir(parents=True)
        for idx in (0, 1, 10):
            seq = _siren_module(label * 100 + idx, sizes)
            state = {f"net.{i}.linear.{p}": t for i, lin in enumerate(seq) for p, t in lin.state_dict().items()}
            torch.save(state, d / f"net{idx}.pth")
            ref[str(d / f"net{idx}.pth")] = seq
    run("nfn", tmp_path / "src", tmp_path / "zoo", val_fraction=1 / 3, seed=1)
    zoo = load_zoo(tmp_path / "zoo")
    assert zoo.spec.layer_sizes == sizes and len(zoo.records) == 6
    coords = coordinate_grid(8, 8)
    for i, f in enumerate(nfn_files(tmp_path / "src")):
        assert zoo.records[i].label == int(f.path.parent.name.split("_")[-1][:-1])
        ours = siren_forward({k: v[i : i + 1] for k, v in zoo.params.items()}, zoo.spec, coords, 30.0, 0.0)[0]
        with torch.no_grad():
            torch.testing.assert_close(ours, _reference_output(ref[str(f.path)], coords, 30.0, 0.0))
    assert [f.path.stem for f in nfn_files(tmp_path / "src")][:3] == ["net0", "net1", "net10"]


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "PWNED",))


def test_a_pickle_with_code_is_refused_and_named(tmp_path: Path):
    marker = Path(__file__).parent / "PWNED"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"seq.0.weight": _Payload()}, f)
    with pytest.raises(CorruptFileError, match="evil.pth"):
        read_state_dict(path)
    assert not marker.exists()


def test_broken_layouts_name_the_file(tmp_path: Path):
    path = tmp_path / "bad.pth"
    torch.save(
        {
            "seq.0.weight": torch.zeros(4, 2),
            "seq.0.bias": torch.zeros(4),
            "seq.1.weight": torch.zeros(1, 5),
            "seq.1.bias": torch.zeros(1),
        },
        path,
    )
    with pytest.raises(CorruptFileError, match=r"bad.pth: seq.1.weight takes 5 inputs"):
        mlp_params(read_state_dict(path), path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(CorruptFileError, match="bad.pth"):
        read_state_dict(path)


@pytest.mark.slow
def test_graphs_stage_reads_an_imported_zoo(tmp_path: Path):
    from pipeline.graphs.store import GraphSet
    from tests.conftest import run_stage, write_params

    _write_dwsnets(tmp_path / "src", n_per=2)
    run("dwsnets", tmp_path / "src", tmp_path / "zoo", val_fraction=0.25, seed=0)
    params = write_params(tmp_path / "params.yaml")
    res = run_stage(
        "graphs", ["--params", str(params), "--zoo", str(tmp_path / "zoo"), "--out", str(tmp_path / "g")], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "g" / "meta.json").read_text())
    assert meta["counts"] == {"train": 3, "val": 1, "test": 4}
    assert meta["forward"] == {"activation": "sin", "omega0": 30.0, "output_offset": 0.5}
    assert sorted(GraphSet.load(tmp_path / "g" / "test.safetensors").y.tolist()) == [3, 3, 7, 7]


# --------------------------------------------------------------------------------------------
# Import refuses what is not a usable net: non-finite weights, labels outside 0..9, listings
# that point outside --src
# --------------------------------------------------------------------------------------------


def test_non_finite_net_is_refused_naming_the_file(tmp_path: Path):
    _write_dwsnets(tmp_path / "src", n_per=1)
    path = sorted((tmp_path / "src").rglob("model_final.pth"))[1]
    state = torch.load(path, weights_only=True)
    state["seq.1.weight"][3, 4] = float("nan")
    torch.save(state, path)
    with pytest.raises(CorruptFileError, match=rf"{re.escape(str(path))}: layers.1.weight holds non-finite values"):
        run("dwsnets", tmp_path / "src", tmp_path / "zoo", val_fraction=0.0, seed=0)
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("where", ["file", "splits"])
def test_out_of_range_label_is_refused_naming_the_file(tmp_path: Path, where: str):
    _write_dwsnets(tmp_path / "src", n_per=1, with_splits=where == "splits")
    if where == "file":
        path = sorted((tmp_path / "src").rglob("model_final.pth"))[2]
        state = torch.load(path, weights_only=True)
        state["label"] = 12
        torch.save(state, path)
    else:
        listing = json.loads((tmp_path / "src" / "splits.json").read_text())
        listing["test"]["label"][0] = -1
        (tmp_path / "src" / "splits.json").write_text(json.dumps(listing))
        path = tmp_path / "src" / listing["test"]["path"][0]
    with pytest.raises(CorruptFileError, match=rf"{re.escape(str(path))}: .* is outside the classes 0\.\.9"):
        run("dwsnets", tmp_path / "src", tmp_path / "zoo", val_fraction=0.0, seed=0)


@pytest.mark.parametrize("style", ["relative", "absolute"])
@pytest.mark.slow
def test_splits_entry_outside_the_source_dir_is_refused(tmp_path: Path, style: str):
    _write_dwsnets(tmp_path / "src", n_per=1, with_splits=True)
    elsewhere = tmp_path / "elsewhere" / "mnist_png_training_3_9" / "checkpoints" / "model_final.pth"
    elsewhere.parent.mkdir(parents=True)
    shutil.copy(next((tmp_path / "src").rglob("model_final.pth")), elsewhere)
    listing = json.loads((tmp_path / "src" / "splits.json").read_text())
    listing["train"]["path"][0] = (
        str(elsewhere) if style == "absolute" else f"../elsewhere/{elsewhere.relative_to(tmp_path / 'elsewhere')}"
    )
    (tmp_path / "src" / "splits.json").write_text(json.dumps(listing))
    with pytest.raises(CorruptFileError, match=r"splits\.json: listed file .* outside the source directory"):
        run("dwsnets", tmp_path / "src", tmp_path / "zoo", val_fraction=0.0, seed=0)
    # the command line says the same, without a traceback
    with pytest.raises(SystemExit, match=r"import_zoo: .*splits\.json: listed file .* outside the source directory"):
        main(["--format", "dwsnets", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "zoo")])
    assert not (tmp_path / "zoo").exists()
