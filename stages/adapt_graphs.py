"""DVC stage ``adapt_graphs``: the domain-adaptation zoo -> normalized neural graphs
(:mod:`pipeline.graphs.build`); each graph's target is its net's digit pair."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.graphs.build import finite_nets, write_graph_sets
from pipeline.zoo.store import load_spec_zoo
from stages.common import parse, reported_errors

log = logging.getLogger("stages.adapt_graphs")  # its name also when run as ``python -m``


def run(params: Params, zoo_dir: Path, out: Path) -> dict:
    from pipeline import tracking

    spec, zoo_params, rows, info = load_spec_zoo(zoo_dir)
    try:
        meta = write_graph_sets(
            out,
            spec,
            zoo_params,
            torch.tensor([int(r["pair"]) for r in rows]),
            torch.tensor([int(r["net_id"]) for r in rows]),
            [r["split"] for r in rows],
            finite_nets(zoo_params),
            {"task": "adaptation", "kind": "adaptation", "n_targets": 2, "novel_pairs": info["novel_pairs"]}
            | {"zoo_summary": info["summary"]},
        )
    except ValueError as e:
        raise SystemExit(f"adapt_graphs: {e}") from e
    log.info("adapt_graphs: %s graphs; non-finite nets excluded %s", meta["counts"], meta["excluded"])
    with tracking.stage_run(params.mlflow, "adapt_graphs", to_flat_dict(params), {}):
        tracking.log_metrics(params.mlflow, {f"n_{k}": v for k, v in meta["counts"].items()})
    return meta


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"zoo": "data/adapt/zoo", "out": "data/adapt/graphs"}, argv)
    with reported_errors("adapt_graphs", Path(args.out)):
        run(params, Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
