"""DVC stage ``adapt``: domain adaptation with every listed model's editor, as Ray tasks.

Each (model, seed) of ``adapt`` trains the model's editor (:func:`pipeline.models.build_editor`)
to map a classifier of clean digits to one of the corrupted digits
(:mod:`pipeline.tasks.adaptation`, whose :func:`~pipeline.tasks.adaptation.adapt_one` is the job);
selection on the validation target accuracy, the test metrics at the best validation epoch
reported beside the unadapted nets'. The Ray / MLflow wiring is the ``train`` stage's
(:func:`pipeline.runs.run_training`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.runs import run_training
from pipeline.tasks.adaptation import adapt_one, load_adapt_data
from pipeline.train import TrainSettings
from stages.common import parse, reported_errors


def run(params: Params, graphs_dir: Path, zoo_dir: Path, out: Path) -> list[dict]:
    ac = params.adapt
    settings = TrainSettings.of(ac)
    # ReLU nets have no sign symmetry: no augmentation; "_perm" models add random permutations
    return run_training(
        params,
        load_adapt_data(graphs_dir, zoo_dir, ac.n_train),
        out,
        ac.models,
        ac.seeds,
        settings,
        ac.settings_by_model(),
        "none",
        ac.threads_per_task,
        "adapt",
        worker=adapt_one,
        extra={"init_scale": ac.init_scale},
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(
        __doc__, {"graphs": "data/adapt/graphs", "zoo": "data/adapt/zoo", "out": "data/adapt/train"}, argv
    )
    with reported_errors("adapt", Path(args.out)):
        run(params, Path(args.graphs), Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
