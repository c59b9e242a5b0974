"""DVC stage ``adapt_zoo``: binary MLP classifiers of digit pairs on clean digits, with their
baselines on the corrupted target domain (:mod:`pipeline.zoo.adapt_zoo`); shards as Ray tasks,
resumable."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.distributed import task_device
from pipeline.provenance import fit_environment
from pipeline.zoo import adapt_zoo
from stages.common import parse, reported_errors
from stages.zoo_driver import run_zoo


def run(params: Params, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    environment = fit_environment("stages.adapt_zoo")
    banks = adapt_zoo.digit_banks(params.adapt, params.seed, environment, out)
    plan = adapt_zoo.zoo_plan(params.adapt, params.seed, task_device(params.ray), environment, banks)
    return run_zoo(params, plan, adapt_zoo.record, out)


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"out": "data/adapt/zoo"}, argv)
    with reported_errors("adapt_zoo", Path(args.out)):
        run(params, Path(args.out))


if __name__ == "__main__":
    main()
