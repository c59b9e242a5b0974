"""DVC stage ``kan_train@<task>``: every (model, seed) on one KAN-graph task as Ray tasks, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.runs import GraphData, run_training
from pipeline.train import TrainSettings
from stages.common import parse, reported_errors


def run(params: Params, task: str, graphs_dir: Path, out: Path) -> list[dict]:
    kt = params.kan.train
    settings = TrainSettings.of(kt)
    configs = kt.settings_by_model()
    # KANs have no sign symmetry (SiLU is not odd): no sign flips; "_perm" models add permutations
    return run_training(
        params,
        GraphData.load(graphs_dir),
        out,
        kt.models,
        kt.seeds,
        settings,
        configs,
        "none",
        kt.threads_per_task,
        f"kan_train@{task}",
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"task": "inr", "graphs": "", "out": ""}, argv)
    graphs = Path(args.graphs or f"data/kan/{args.task}/graphs")
    out = Path(args.out or f"data/kan/{args.task}/train")
    with reported_errors(f"kan_train@{args.task}", out):
        run(params, args.task, graphs, out)


if __name__ == "__main__":
    main()
