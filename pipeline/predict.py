"""Apply a trained metanetwork to the nets of any zoo (``stages/predict.py``'s library half).

A SIREN zoo (``pipeline.zoo.store``) and a KAN zoo (``pipeline.zoo.kan_zoo``) are read alike:
every net's parameters and its manifest row, hashes checked. The table has one row per net:
its id, split, whether the zoo flagged it as diverged, its true target where the manifest has
one (``label`` for INRs, ``test_acc`` for classifiers) and the model's prediction.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.graphs.build import finite_nets
from pipeline.io import read_json
from pipeline.saved import SavedModel
from pipeline.weightspace.spec import Params, ParamSpec


def zoo_nets(zoo_dir: str | Path) -> tuple[ParamSpec, Params, list[dict[str, str]]]:
    """``(spec, params, manifest rows)`` of a SIREN or KAN zoo, nets in manifest order."""
    zoo_dir = Path(zoo_dir)
    if not (zoo_dir / "zoo.json").is_file():
        raise FileNotFoundError(f"{zoo_dir}: not a zoo (no zoo.json); build one with the zoo or kan_zoo stage")
    if "task" in read_json(zoo_dir / "zoo.json").get("recipe", {}):
        from pipeline.zoo.kan_zoo import load_kan_zoo

        spec, params, rows, _ = load_kan_zoo(zoo_dir)
        return spec, params, rows
    from dataclasses import asdict

    from pipeline.zoo.store import load_zoo

    zoo = load_zoo(zoo_dir)
    return zoo.spec, zoo.params, [{k: str(v) for k, v in asdict(r).items()} for r in zoo.records]


def predictions_table(model: SavedModel, zoo_dir: str | Path) -> list[dict]:
    """One row per net of ``zoo_dir`` with ``model``'s prediction (non-finite nets get none)."""
    spec, params, rows = zoo_nets(zoo_dir)
    idx = finite_nets(params).nonzero().flatten()
    out = model.predict({k: v[idx] for k, v in params.items()}) if idx.numel() else torch.empty(0, 1)
    classify = model.card["objective"]["kind"] == "classification"
    target = "label" if classify else "test_acc"
    pred: dict[int, torch.Tensor] = dict(zip(idx.tolist(), out, strict=True))
    table = []
    for i, r in enumerate(rows):
        row = {"net_id": int(r["net_id"]), "split": r.get("split", ""), "diverged": r.get("diverged", "0")}
        if target in r:
            row[target] = r[target]
        p = pred.get(i)
        if classify:
            row["predicted_label"] = "" if p is None else int(p.argmax())
            row["confidence"] = "" if p is None else f"{float(p.softmax(0).max()):.4f}"
        elif out.shape[1] == 1:
            row[f"predicted_{target}"] = "" if p is None else f"{float(p[0]):.6f}"
        else:  # several regression targets: one column each
            row |= {f"predicted_{k}": "" if p is None else f"{float(p[k]):.6f}" for k in range(out.shape[1])}
        table.append(row)
    return table
