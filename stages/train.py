"""DVC stage ``train``: every (model, seed) on the SIREN graphs as a Ray task, tracked in MLflow.

The runs (resume, live tracking, kept models) are :func:`pipeline.runs.run_training`'s.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.runs import GraphData, run_training
from pipeline.train import TrainSettings
from stages.common import parse, reported_errors


def run(params: Params, graphs_dir: Path, out: Path) -> list[dict]:
    tc = params.train
    settings = TrainSettings.of(tc)
    configs = tc.settings_by_model()
    data = GraphData.load(graphs_dir)
    return run_training(
        params, data, out, tc.models, tc.seeds, settings, configs, tc.augment, tc.threads_per_task, "train"
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"graphs": "data/graphs", "out": "data/train"}, argv)
    with reported_errors("train", Path(args.out)):
        run(params, Path(args.graphs), Path(args.out))


if __name__ == "__main__":
    main()
