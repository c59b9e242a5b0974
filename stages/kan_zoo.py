"""DVC stage ``kan_zoo@<task>``: a zoo of KANs (``inr`` or ``classifier``), shards as Ray tasks, resumable."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.distributed import task_device
from pipeline.provenance import fit_environment
from pipeline.zoo import kan_zoo
from pipeline.zoo.family import ZooPlan
from stages.common import parse, reported_errors
from stages.zoo_driver import run_zoo


def plan(params: Params, task: str) -> ZooPlan:
    """The nets, shards and fingerprints of one KAN task that ``params`` define."""
    if task not in kan_zoo.KAN_TASKS:
        raise SystemExit(f"kan_zoo: unknown task {task!r}; choose from {kan_zoo.KAN_TASKS}")
    environment = fit_environment("stages.kan_zoo")
    return kan_zoo.zoo_plan(params.kan, task, params.seed, task_device(params.ray), environment)


def run(params: Params, task: str, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    return run_zoo(params, plan(params, task), kan_zoo.record, out)


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"task": "inr", "out": ""}, argv)
    out = Path(args.out or f"data/kan/{args.task}/zoo")
    with reported_errors(f"kan_zoo@{args.task}", out):
        run(params, args.task, out)


if __name__ == "__main__":
    main()
