"""experiments/reference_side_by_side.py without the official checkouts: the sizes each setting
gives the official models, and the paired interval of metazoo's accuracy against an official row."""

from __future__ import annotations

import importlib.util
import sys

import torch

from pipeline.config import load_params
from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("side_by_side", REPO / "experiments" / "reference_side_by_side.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_main_setting_sizes_the_official_models_as_the_main_table(monkeypatch):
    monkeypatch.chdir(REPO)
    sbs, train = _script(), load_params(REPO / "params.yaml").train
    dws = train.settings("dwsnet")
    assert sbs.setting_sizes("main", "dwsnet") == {
        "hidden": dws.hidden,
        "n_hidden": dws.layers - 1,  # the official model counts the layers after the first
        "set_layer": "sab" if dws.set_heads else "ds",
    }
    for name in ("nfn", "ng_gnn", "ng_t"):
        assert sbs.setting_sizes("main", name) == {"hidden": train.settings(name).hidden}
    assert sbs.setting_sizes("official", "nfn") == {"hidden": 512}
    assert sbs.setting_sizes("official", "ng_t") == {"hidden": None}  # the official config's widths


def test_metazoo_minus_official_is_a_paired_interval_with_its_reading():
    sbs = _script()
    g = torch.Generator().manual_seed(0)
    y = torch.randint(10, (300,), generator=g)
    noisy = [torch.where(torch.rand(300, generator=g) < 0.5, y, (y + 1) % 10) for _ in range(2)]

    def runs(preds):
        return [{"test_predictions": p.tolist()} for p in preds]

    same = sbs.versus(runs(noisy), runs(noisy), y.tolist(), "official, metazoo recipe")
    assert same.startswith("+0.0 [") and same.endswith(": within")
    better = sbs.versus(runs([y, y]), runs(noisy), y.tolist(), "official, metazoo recipe")
    assert better.endswith(": better") and float(better.split()[0]) > 40
    worse = sbs.versus(runs(noisy), runs([y, y]), y.tolist(), "official, metazoo recipe")
    assert worse.endswith(": worse")
    assert sbs.versus(runs(noisy), [{}], y.tolist(), "official, its recipe") == "no per-item predictions"
    assert sbs.versus(runs(noisy), runs(noisy), y.tolist(), "metazoo, metazoo recipe") == ""
