"""DVC stage ``edit``: INR editing (dilation) with every equivariant editor, as Ray tasks.

Each (model, seed) of ``edit`` trains the model's editor (:func:`pipeline.models.build_editor`)
to map a SIREN's weights to weights whose rendering on the 28x28 grid is the dilated image
(:mod:`pipeline.tasks.editing`); selection on the validation MSE, the test MSE at the best
validation epoch reported, beside the MSE of the unedited INRs. The Ray / MLflow wiring is the
``train`` stage's (:func:`pipeline.runs.run_training`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.augment import augmenter
from pipeline.config import Params
from pipeline.data import load_images
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import fingerprint, read_json
from pipeline.models import build_editor
from pipeline.models.saved import model_card
from pipeline.runs import GraphData, TaskContext, result_dict, run_training
from pipeline.tasks.editing import Editing, dilate, render_sirens
from pipeline.train import TrainSettings, data_shape, fit_model, forward_spec_from_meta, model_inputs
from pipeline.weightspace.spec import ParamSpec, flatten
from pipeline.zoo.store import read_manifest
from stages.common import parse, reported_errors

SPLITS = ("train", "val", "test")
N_EXAMPLES = 6  # test INRs rendered before / after editing for the report's figure (spread over the split)


def with_targets(graphs: GraphSet, image_of_net: dict[int, int], images: torch.Tensor) -> GraphSet:
    """The graph set with ``y`` replaced by each INR's dilated image ``(G, H, W)``."""
    idx = torch.tensor([image_of_net[int(n)] for n in graphs.net_id])
    return dataclasses.replace(graphs, y=dilate(images[idx]))


def subset(graphs: GraphSet, n: int, template, seed: int) -> GraphSet:
    """``n`` graphs drawn at random with ``seed`` (all for ``n == 0`` or ``n >= len``).

    Random, not the first ``n``: the zoo's splits are sorted by image index, and the offline
    MNIST digits are sorted by label, so the first 1 000 training INRs are only 0s, 1s and 2s.
    """
    if n == 0 or n >= len(graphs):
        return graphs
    idx = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    params = {k: v[idx] for k, v in graphs.to_params(template).items()}
    return GraphSet.from_params(params, template, graphs.y[idx], graphs.net_id[idx])


def load_edit_data(graphs_dir: Path, zoo_dir: Path, n_train: int) -> GraphData:
    """The graphs with every INR's dilated image as target, ``n_train`` training INRs drawn once
    (the same for every seed): what each editing task receives through the object store."""
    data = GraphData.load(graphs_dir)
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    images, _ = load_images(read_json(zoo_dir / "zoo.json")["recipe"]["source"])
    image_of_net = {r.net_id: r.image_index for r in read_manifest(zoo_dir / "manifest.csv")}
    splits = {s: with_targets(g, image_of_net, images) for s, g in data.splits.items()}
    splits["train"] = subset(splits["train"], n_train, template, seed=0)
    zoo = {"manifest": (zoo_dir / "manifest.csv").read_text(), "zoo": read_json(zoo_dir / "zoo.json")}
    return GraphData(data.meta, splits, {"targets": "dilation", "n_train": n_train, "zoo": fingerprint(zoo)})


def edit_one(
    data: GraphData,
    model_name: str,
    model_cfg,
    seed: int,
    ctx: TaskContext,
    settings: TrainSettings,
    augment: str,
    init_scale: float,
) -> dict:
    """Train one editor; return its result (with the no-edit reference and example renders)."""
    device, where = ctx.start()
    torch.manual_seed(seed)
    meta, splits = data.meta, data.splits
    spec = ParamSpec.from_dict(meta["spec"])
    template = graph_template(spec)
    fwd = meta["forward"]
    stats = {k: tuple(v) for k, v in meta["norm_stats"].items()}
    objective = Editing(spec, float(fwd["omega0"]), float(fwd["output_offset"]), stats)
    shape = data_shape(splits["train"], template, 1, forward_spec_from_meta(meta))
    model = build_editor(model_name, model_cfg, shape, init_scale)
    inputs = {s: model_inputs(g, template, model.input_kind) for s, g in splits.items()}
    test = splits["test"]
    test_flat = flatten(test.to_params(template), spec)
    reference = objective.metrics(test_flat, test.y)  # the unedited INRs against the dilated images
    examples: dict[str, list] = {}
    shown = torch.linspace(0, len(test) - 1, N_EXAMPLES).round().long()  # splits are sorted by digit: spread out

    def render(flat: torch.Tensor) -> list:
        rendered = render_sirens(flat.cpu(), spec, objective.omega0, objective.offset, stats=stats)
        return rendered.round(decimals=4).tolist()

    def on_best(m: torch.nn.Module) -> None:
        with torch.no_grad():
            examples["edited"] = render(m(inputs["test"].batch(shown).to(device)))  # 6 examples moved, not the split

    def progress(row: dict) -> None:
        print(
            f"edit {model_name} seed {seed}: epoch {int(row['epoch'])}/{settings.epochs} train loss "
            f"{row['train_loss']:.4f} val mse {row['val_mse']:.4f} ({row['epoch_seconds']:.0f} s)",
            flush=True,
        )
        ctx.epoch(row)

    t0 = time.time()
    res = fit_model(
        model,
        inputs["train"],
        inputs["val"],
        inputs["test"],
        settings,
        seed,
        objective,
        on_epoch=progress,
        augment=augmenter(augment, model.input_kind, spec),
        on_best=on_best,
        device=device,
    )
    examples["original"] = render(test_flat[shown])
    examples["target"] = test.y[shown].round(decimals=4).tolist()
    out = result_dict(res, model_name, seed, model_cfg, time.time() - t0)
    out["card"] = model_card(model_name, model_cfg, shape, meta, objective, init_scale)
    out.update(best_val_metric=res.best_val, **{f"test_{k}": v for k, v in res.test.items()})
    out.update(reference=reference, examples=examples, n_train=len(splits["train"]), n_test=len(test), **where)
    return out


def run(params: Params, graphs_dir: Path, zoo_dir: Path, out: Path) -> list[dict]:
    ec = params.edit
    settings = TrainSettings(ec.epochs, ec.batch_size, ec.lr, ec.weight_decay, ec.warmup_steps, ec.grad_clip)
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
    with reported_errors("edit"):
        run(params, Path(args.graphs), Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
