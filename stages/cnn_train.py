"""DVC stage ``cnn_train@<family>``: every (model, seed) predicting a CNN's test accuracy from its
weights, as Ray tasks, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.runs import GraphData, run_training
from pipeline.train import TrainSettings
from pipeline.zoo.cnn_zoo import CNN_FAMILIES
from stages.common import parse, reported_errors


def run(params: Params, family: str, graphs_dir: Path, out: Path) -> list[dict]:
    if family not in CNN_FAMILIES:
        raise SystemExit(f"cnn_train: unknown family {family!r}; choose from {CNN_FAMILIES}")
    ct = params.cnn.train
    settings = TrainSettings.of(ct)
    # ReLU-family CNNs have no sign symmetry, and the heterogeneous zoo no single weight space:
    # no augmentation; "_perm" models (homogeneous zoo) add random channel permutations
    return run_training(
        params,
        GraphData.load(graphs_dir),
        out,
        ct.family_models(family),
        ct.seeds,
        settings,
        ct.settings_by_model(),
        "none",
        ct.threads_per_task,
        f"cnn_train@{family}",
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"family": "homogeneous", "graphs": "", "out": ""}, argv)
    graphs = Path(args.graphs or f"data/cnn/{args.family}/graphs")
    out = Path(args.out or f"data/cnn/{args.family}/train")
    with reported_errors(f"cnn_train@{args.family}", out):
        run(params, args.family, graphs, out)


if __name__ == "__main__":
    main()
