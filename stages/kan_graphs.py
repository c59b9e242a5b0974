"""DVC stage ``kan_graphs@<task>``: a KAN zoo -> normalized KAN-graphs with the task's targets.

Tasks: ``inr`` (digit label of a KAN-INR, classification), ``classifier`` (test accuracy of a
KAN classifier, regression). The expressivity check builds its (KAN, query point) graphs on the
fly instead (``stages/kan_forward.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.data import SPLITS
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import write_json
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.zoo.kan_zoo import load_kan_zoo
from stages.common import parse

GRAPH_TASKS = ("inr", "classifier")


def targets(task: str, rows: list[dict]) -> torch.Tensor:
    """Per-net targets: digit labels ``(G,)`` long, or test accuracies ``(G,)``."""
    if task == "inr":
        return torch.tensor([int(r["label"]) for r in rows])
    return torch.tensor([float(r["test_acc"]) for r in rows])


def run(params: Params, task: str, zoo_dir: Path, out: Path) -> dict:
    from pipeline import tracking

    if task not in GRAPH_TASKS:
        raise SystemExit(f"kan_graphs: unknown task {task!r}; choose from {sorted(GRAPH_TASKS)}")
    spec, zoo_params, rows, info = load_kan_zoo(zoo_dir)
    y_all = targets(task, rows)
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
        gs = GraphSet.from_params(normed, template, y_all[idx], net_ids)
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
    zoo = args.zoo or f"data/kan/{args.task}/zoo"
    run(params, args.task, Path(zoo), Path(args.out or f"data/kan/{args.task}/graphs"))


if __name__ == "__main__":
    main()
