"""DVC stage ``cnn_zoo@<family>``: a zoo of CNN classifiers (``homogeneous`` or
``heterogeneous``), one architecture per shard, shards as Ray tasks, resumable."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.distributed import task_device
from pipeline.provenance import fit_environment
from pipeline.zoo import cnn_zoo
from pipeline.zoo.family import ZooPlan
from stages.common import parse, reported_errors
from stages.zoo_driver import run_zoo


def plan(params: Params, family: str) -> ZooPlan:
    """The architectures, runs, shards and fingerprints of one CNN family that ``params`` define."""
    if family not in cnn_zoo.CNN_FAMILIES:
        raise SystemExit(f"cnn_zoo: unknown family {family!r}; choose from {cnn_zoo.CNN_FAMILIES}")
    environment = fit_environment("stages.cnn_zoo")
    return cnn_zoo.zoo_plan(params.cnn, family, params.seed, task_device(params.ray), environment)


def run(params: Params, family: str, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    return run_zoo(params, plan(params, family), cnn_zoo.record, out)


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"family": "homogeneous", "out": ""}, argv)
    out = Path(args.out or f"data/cnn/{args.family}/zoo")
    with reported_errors(f"cnn_zoo@{args.family}", out):
        run(params, args.family, out)


if __name__ == "__main__":
    main()
