"""KAN zoos as graph sets: each KAN's KAN-graph (:mod:`pipeline.graphs.neural_graph`, the same
builder as for MLPs) with its task's target."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pipeline.graphs.build import finite_nets, write_graph_sets
from pipeline.zoo.kan_zoo import load_kan_zoo

GRAPH_TASKS = ("inr", "classifier")  # the KAN zoos read as graph sets (the forward check builds its own)


def graph_targets(task: str, rows: list[dict]) -> Tensor:
    """Per-net targets of a KAN zoo's manifest rows: digit labels ``(G,)`` long (``inr``), or
    test accuracies ``(G,)`` (``classifier``)."""
    if task == "inr":
        return torch.tensor([int(r["label"]) for r in rows])
    return torch.tensor([float(r["test_acc"]) for r in rows])


def write_kan_graphs(task: str, zoo_dir: str | Path, out: str | Path) -> dict:
    """The KAN zoo in ``zoo_dir`` as normalized KAN-graph sets with ``task``'s targets
    (:func:`~pipeline.graphs.build.write_graph_sets`), non-finite KANs and targets excluded;
    returns the graphs' ``meta.json``. Raises ``ValueError`` if a split is left empty."""
    spec, zoo_params, rows, info = load_kan_zoo(zoo_dir)
    y_all = graph_targets(task, rows)
    usable = finite_nets(zoo_params) & torch.isfinite(y_all.float().reshape(len(rows), -1)).all(1)
    kind = "classification" if task == "inr" else "regression"
    meta = {"task": task, "kind": kind, "n_targets": 10 if kind == "classification" else 1}
    ids = torch.tensor([int(r["net_id"]) for r in rows])
    splits = [r["split"] for r in rows]
    return write_graph_sets(out, spec, zoo_params, y_all, ids, splits, usable, meta | {"zoo_summary": info["summary"]})
