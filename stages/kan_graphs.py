"""DVC stage ``kan_graphs@<task>``: a KAN zoo -> normalized KAN-graphs with the task's targets.

Tasks: ``inr`` (digit label of a KAN-INR, classification), ``classifier`` (test accuracy of a
KAN classifier, regression), ``inr_forward`` (the WS-KAN expressivity check, regression: one
graph per (KAN-INR, query point), the point's coordinates as an extra feature of the two input
nodes, the target the KAN's own output there).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.data import SPLITS
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import write_json
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import Params as ZooBatch
from pipeline.zoo.kan import kan_forward
from pipeline.zoo.kan_zoo import load_kan_zoo
from stages.common import parse

GRAPH_TASKS = {"inr": "inr", "classifier": "classifier", "inr_forward": "inr"}  # task -> zoo it reads


def query_points(n_nets: int, per_net: int, seed: int) -> torch.Tensor:
    """``per_net`` random query points in ``[-1, 1]^2`` for each net: ``(n_nets, per_net, 2)``."""
    g = torch.Generator().manual_seed(seed + 17)
    return torch.rand(n_nets, per_net, 2, generator=g, dtype=torch.float64).float() * 2 - 1


def targets(task: str, params: ZooBatch, spec, rows: list[dict], points: torch.Tensor | None) -> torch.Tensor:
    """Per-net targets: labels ``(G,)`` long, accuracies ``(G,)``, or outputs ``(G, P)`` at ``points``."""
    if task == "inr":
        return torch.tensor([int(r["label"]) for r in rows])
    if task == "classifier":
        return torch.tensor([float(r["test_acc"]) for r in rows])
    with torch.no_grad():
        return kan_forward(params, spec, points)[..., 0]


QUERY_FREQS = 4


def query_features(p: torch.Tensor) -> torch.Tensor:
    """``(n,)`` coordinates -> ``(n, 1 + 2F)``: ``[p, sin(pi f p), cos(pi f p)]`` for ``f = 1..F``.

    A single raw coordinate column next to the normalized weights was too weak a signal: no
    graph model moved off the mean (R² 0.00 after 1 200 steps); with these features they learn.
    """
    f = torch.arange(1, QUERY_FREQS + 1, dtype=p.dtype) * torch.pi
    return torch.cat([p.unsqueeze(1), torch.sin(p.unsqueeze(1) * f), torch.cos(p.unsqueeze(1) * f)], dim=1)


def with_queries(graphs: GraphSet, points: torch.Tensor) -> GraphSet:
    """Append query columns: input node ``i`` of graph ``g`` gets ``query_features(points[g, i])``, others 0."""
    cols = torch.zeros(graphs.x.shape[0], 1 + 2 * QUERY_FREQS)
    inputs = graphs.node_layer == 0
    owner = torch.repeat_interleave(torch.arange(len(graphs)), graphs.node_ptr[1:] - graphs.node_ptr[:-1])
    cols[inputs] = query_features(points[owner[inputs], graphs.node_pos[inputs]])
    return dataclasses.replace(graphs, x=torch.cat([graphs.x, cols], dim=1))


def run(params: Params, task: str, zoo_dir: Path, out: Path) -> dict:
    from pipeline import tracking

    if task not in GRAPH_TASKS:
        raise SystemExit(f"kan_graphs: unknown task {task!r}; choose from {sorted(GRAPH_TASKS)}")
    spec, zoo_params, rows, info = load_kan_zoo(zoo_dir)
    per_net = params.kan.inr.forward_points
    points = query_points(len(rows), per_net, params.seed) if task == "inr_forward" else None
    y_all = targets(task, zoo_params, spec, rows, points)
    finite = torch.ones(len(rows), dtype=torch.bool)
    for v in zoo_params.values():
        finite &= torch.isfinite(v.flatten(1)).all(1)
    finite &= torch.isfinite(y_all.float().reshape(len(rows), -1)).all(1)
    split_of = [r["split"] for r in rows]

    def select(split: str) -> torch.Tensor:
        return torch.tensor([i for i, s in enumerate(split_of) if s == split and bool(finite[i])], dtype=torch.long)

    template = graph_template(spec)
    train_idx = select("train")
    stats = fit_stats({k: v[train_idx] for k, v in zoo_params.items()}, spec)
    kind = "classification" if task == "inr" else "regression"
    meta = {
        "task": task,
        "kind": kind,
        "n_targets": 10 if kind == "classification" else 1,
        "spec": spec.to_dict(),
        "norm_stats": stats,
        "zoo_summary": info["summary"],
        "query_points_per_net": per_net if points is not None else 0,
        "n_pos": template.n_pos,
        "counts": {},
        "excluded": {},
    }
    for split in SPLITS:
        idx = select(split)
        if idx.numel() == 0:
            raise SystemExit(f"kan_graphs@{task}: no usable KAN in split {split!r}")
        net_ids = torch.tensor([int(rows[i]["net_id"]) for i in idx.tolist()])
        normed = apply_stats({k: v[idx] for k, v in zoo_params.items()}, spec, stats)
        if points is None:
            gs = GraphSet.from_params(normed, template, y_all[idx], net_ids)
        else:  # one graph per (net, query point)
            rep = {k: v.repeat_interleave(per_net, dim=0) for k, v in normed.items()}
            ys = y_all[idx].reshape(-1)
            gs = GraphSet.from_params(rep, template, ys, net_ids.repeat_interleave(per_net))
            gs = with_queries(gs, points[idx].reshape(-1, 2))
        gs.save(out / f"{split}.safetensors")
        meta["counts"][split] = len(gs)
        meta["excluded"][split] = sum(s == split for s in split_of) - idx.numel()
    write_json(out / "meta.json", meta)
    print(f"kan_graphs@{task}: {meta['counts']} graphs; non-finite nets excluded {meta['excluded']}")
    with tracking.stage_run(params.mlflow, f"kan_graphs@{task}", to_flat_dict(params), {"kan_task": task}):
        import mlflow

        mlflow.log_metrics({f"n_{k}": v for k, v in meta["counts"].items()})
    return meta


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"task": "inr", "zoo": "", "out": ""}, argv)
    zoo = args.zoo or f"data/kan/{GRAPH_TASKS.get(args.task, args.task)}/zoo"
    run(params, args.task, Path(zoo), Path(args.out or f"data/kan/{args.task}/graphs"))


if __name__ == "__main__":
    main()
