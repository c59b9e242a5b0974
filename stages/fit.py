"""DVC stage of every fitting task (:mod:`pipeline.tasks.registry`): train each (model, seed) of
the task's settings section on its data as Ray tasks, resumable, tracked live in MLflow; one
result JSON and one model file per run in ``--out``.

    python -m stages.fit train                  # INR classification: data/graphs -> data/train
    python -m stages.fit edit                   # INR editing: data/graphs, data/zoo -> data/edit
    python -m stages.fit adapt                  # domain adaptation
    python -m stages.fit cnn_train@homogeneous  # CNN generalization (also @heterogeneous)
    python -m stages.fit kan_train@inr          # WS-KAN tasks (also @classifier)

Each task's inputs and output are options (``--graphs``, ``--zoo``, ``--out``) with the
defaults above; ``--params`` picks the params file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import Params
from pipeline.runs import run_task
from pipeline.tasks import registry
from stages.common import parse, reported_errors


def run(params: Params, stage: str, **paths: str | Path) -> list[dict]:
    """Run fitting stage ``stage`` in this process; the task's inputs and ``out`` default as on
    the command line. Returns the runs."""
    task = registry.task(stage)
    given = task.default_paths(stage.partition("@")[2]) | paths
    return run_task(params, task, stage, {name: Path(p) for name, p in given.items()})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    stage = argv[0] if argv and not argv[0].startswith("-") else ""
    try:
        task = registry.task(stage)
    except KeyError as e:
        raise SystemExit(f"usage: python -m stages.fit <task>[@<variant>] [options]; {e.args[0]}") from None
    params, args = parse(__doc__, task.default_paths(stage.partition("@")[2]), argv[1:])
    paths = {name: getattr(args, name) for name in task.paths}
    with reported_errors(stage, Path(paths["out"])):
        run(params, stage, **paths)


if __name__ == "__main__":
    main()
