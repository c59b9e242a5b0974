"""DVC stage ``l2o``: learning to optimize (Neural Graphs §4.3), as Ray tasks.

Each (optimizer, seed) of ``l2o`` meta-trains a learned optimizer (FF, NG-GNN, NG-T) on the
meta-training task, or tunes a baseline's learning rate (Adam, SGD with momentum) there, then
trains fresh nets of both tasks with it and scores them (:func:`pipeline.tasks.l2o.l2o_one`).
Runs resume, are tracked live in MLflow and keep every meta-trained optimizer as
``<out>/<optimizer>_seed<seed>.safetensors`` (:func:`pipeline.tasks.l2o.load_optimizer`), as in
``train`` (:mod:`pipeline.runs`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.config import Params
from pipeline.runs import Job, StageRuns
from pipeline.tasks.l2o import data_version, final_metrics, l2o_one, load_data, optimizer_config, settings_from
from stages.common import parse, reported_errors

log = logging.getLogger("stages.l2o")  # its name also when run as ``python -m``


def run(params: Params, out: Path) -> list[dict]:
    c = params.l2o
    data = load_data(c, params.seed)
    settings = settings_from(c)
    jobs = [Job(name, s, optimizer_config(c, name)) for name in c.optimizers for s in c.seeds]
    runs = StageRuns(params, "l2o", out, jobs, data_version(data), dataclasses.asdict(settings), final_metrics)
    results = runs.run(data, l2o_one, (settings,), c.threads_per_task)
    for r in results:
        t = r["test"]
        log.info(
            "l2o: %6s seed %d: meta task loss %.4f acc %.4f; test task loss %.4f acc %.4f", r["model"], r["seed"],
            t["meta_task_loss"], t["meta_task_acc"], t["test_task_loss"], t["test_task_acc"],
        )  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"out": "data/l2o"}, argv)
    with reported_errors("l2o", Path(args.out)):
        run(params, Path(args.out))


if __name__ == "__main__":
    main()
