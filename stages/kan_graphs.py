"""DVC stage ``kan_graphs@<task>``: a KAN zoo -> normalized KAN-graphs with the task's targets.

Tasks: ``inr`` (digit label of a KAN-INR, classification), ``classifier`` (test accuracy of a
KAN classifier, regression). The expressivity check builds its (KAN, query point) graphs on the
fly instead (``stages/kan_forward.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params, to_flat_dict
from pipeline.graphs.kan_graphs import GRAPH_TASKS, write_kan_graphs
from stages.common import parse, reported_errors

log = logging.getLogger("stages.kan_graphs")  # its name also when run as ``python -m``


def run(params: Params, task: str, zoo_dir: Path, out: Path) -> dict:
    if task not in GRAPH_TASKS:
        raise SystemExit(f"kan_graphs: unknown task {task!r}; choose from {sorted(GRAPH_TASKS)}")
    try:
        meta = write_kan_graphs(task, zoo_dir, out)
    except ValueError as e:
        raise SystemExit(f"kan_graphs@{task}: {e} (non-finite KANs)") from e
    log.info("kan_graphs@%s: %s graphs; non-finite nets excluded %s", task, meta["counts"], meta["excluded"])
    with tracking.stage_run(params.mlflow, f"kan_graphs@{task}", to_flat_dict(params), {"kan_task": task}):
        tracking.log_metrics(params.mlflow, {f"n_{k}": v for k, v in meta["counts"].items()})
    return meta


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"task": "inr", "zoo": "", "out": ""}, argv)
    zoo = args.zoo or f"data/kan/{args.task}/zoo"
    out = Path(args.out or f"data/kan/{args.task}/graphs")
    with reported_errors(f"kan_graphs@{args.task}", out):
        run(params, args.task, Path(zoo), out)


if __name__ == "__main__":
    main()
