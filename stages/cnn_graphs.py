"""DVC stage ``cnn_graphs@<family>``: a CNN zoo -> neural graphs (a node per channel, kernels in
``K x K`` edge slots, residual edges, activation codes), target: each net's test accuracy."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.graphs.cnn_graphs import write_cnn_graph_sets
from pipeline.zoo.cnn_zoo import CNN_FAMILIES, load_cnn_zoo
from stages.common import parse, reported_errors

log = logging.getLogger("stages.cnn_graphs")  # its name also when run as ``python -m``


def run(params: Params, family: str, zoo_dir: Path, out: Path) -> dict:
    from pipeline import tracking

    if family not in CNN_FAMILIES:
        raise SystemExit(f"cnn_graphs: unknown family {family!r}; choose from {CNN_FAMILIES}")
    archs, zoo_params, rows, info = load_cnn_zoo(zoo_dir)
    try:
        meta = write_cnn_graph_sets(
            out,
            archs,
            zoo_params,
            [torch.tensor([float(r["test_acc"]) for r in rs]) for rs in rows],
            [torch.tensor([int(r["net_id"]) for r in rs]) for rs in rows],
            [[r["split"] for r in rs] for rs in rows],
            {"task": f"cnn_{family}", "kind": "regression", "n_targets": 1, "zoo_summary": info["summary"]},
        )
    except ValueError as e:
        raise SystemExit(f"cnn_graphs@{family}: {e}") from e
    log.info("cnn_graphs@%s: %s graphs; non-finite nets excluded %s", family, meta["counts"], meta["excluded"])
    with tracking.stage_run(params.mlflow, f"cnn_graphs@{family}", to_flat_dict(params), {"cnn_family": family}):
        tracking.log_metrics(params.mlflow, {f"n_{k}": v for k, v in meta["counts"].items()})
    return meta


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"family": "homogeneous", "zoo": "", "out": ""}, argv)
    zoo = args.zoo or f"data/cnn/{args.family}/zoo"
    out = Path(args.out or f"data/cnn/{args.family}/graphs")
    with reported_errors(f"cnn_graphs@{args.family}", out):
        run(params, args.family, Path(zoo), out)


if __name__ == "__main__":
    main()
