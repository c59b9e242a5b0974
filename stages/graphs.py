"""DVC stage ``graphs``: SIREN zoo -> normalized neural graphs (:mod:`pipeline.graphs.build`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.graphs.build import write_graph_sets
from pipeline.zoo.siren import output_offset
from pipeline.zoo.store import load_zoo
from stages.common import parse, reported_errors

log = logging.getLogger("stages.graphs")  # its name also when run as ``python -m``


N_CLASSES = 10


def run(params: Params, zoo_dir: Path, out: Path) -> dict:
    from pipeline import tracking

    zoo = load_zoo(zoo_dir)
    fit = zoo.info["recipe"]["fit"]
    forward = {"activation": "sin", "omega0": fit["omega0"], "output_offset": output_offset(fit["variant"])}
    try:
        meta = write_graph_sets(
            out,
            zoo.spec,
            zoo.params,
            torch.tensor([r.label for r in zoo.records]),
            torch.tensor([r.net_id for r in zoo.records]),
            [r.split for r in zoo.records],
            torch.tensor([not r.diverged for r in zoo.records]),
            {"task": "inr", "kind": "classification", "n_targets": N_CLASSES, "forward": forward},
        )
    except ValueError as e:
        raise SystemExit(f"graphs: {e} (diverged INRs): lower zoo.psnr_floor or fit longer (zoo.steps)") from e
    excluded = sum(meta["excluded"].values())
    log.info("graphs: %s graphs written; %s diverged nets excluded %s", meta["counts"], excluded, meta["excluded"])
    with tracking.stage_run(params.mlflow, "graphs", to_flat_dict(params), {}):
        tracking.log_metrics(params.mlflow, {f"n_{k}": v for k, v in meta["counts"].items()} | {"n_excluded": excluded})
    return meta


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"zoo": "data/zoo", "out": "data/graphs"}, argv)
    with reported_errors("graphs", Path(args.out)):
        run(params, Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
