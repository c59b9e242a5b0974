"""DVC stage ``edit``: INR editing (dilation) with every equivariant editor, as Ray tasks.

Each (model, seed) of ``edit`` trains the model's editor (:func:`pipeline.models.build_editor`)
to map a SIREN's weights to weights whose rendering on the 28x28 grid is the dilated image
(:mod:`pipeline.tasks.editing`, whose :func:`~pipeline.tasks.editing.edit_one` is the job);
selection on the validation MSE, the test MSE at the best validation epoch reported, beside
the MSE of the unedited INRs. The Ray / MLflow wiring is the
``train`` stage's (:func:`pipeline.runs.run_training`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.runs import run_training
from pipeline.tasks.editing import edit_one, load_edit_data
from pipeline.train import TrainSettings
from stages.common import parse, reported_errors


def run(params: Params, graphs_dir: Path, zoo_dir: Path, out: Path) -> list[dict]:
    ec = params.edit
    settings = TrainSettings.of(ec)
    return run_training(
        params,
        load_edit_data(graphs_dir, zoo_dir, ec.n_train),
        out,
        ec.models,
        ec.seeds,
        settings,
        ec.settings_by_model(),
        ec.augment,
        ec.threads_per_task,
        "edit",
        worker=edit_one,
        extra={"init_scale": ec.init_scale},
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"graphs": "data/graphs", "zoo": "data/zoo", "out": "data/edit"}, argv)
    with reported_errors("edit", Path(args.out)):
        run(params, Path(args.graphs), Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
