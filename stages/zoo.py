"""DVC stage ``zoo``: fit a SIREN per image, shards fanned out as Ray tasks, resumable."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.distributed import task_device
from pipeline.provenance import fit_environment
from pipeline.zoo import build
from pipeline.zoo.family import ZooPlan
from stages.common import parse, reported_errors
from stages.zoo_driver import run_zoo


def plan_zoo(params: Params) -> ZooPlan:
    """The images, split, nets, shards and their fingerprints that ``params`` define."""
    return build.zoo_plan(params.data, params.zoo, params.seed, task_device(params.ray), fit_environment("stages.zoo"))


def run(params: Params, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    return run_zoo(params, plan_zoo(params), build.record, out)


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"out": "data/zoo"}, argv)
    with reported_errors("zoo", Path(args.out)):
        run(params, Path(args.out))


if __name__ == "__main__":
    main()
