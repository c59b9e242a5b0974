"""DVC stage ``train``: every (model, seed) as a Ray task; the driver logs each to MLflow.

:func:`run_training` is shared with the KAN stages (``stages/kan_train.py``) and the editing
stage (``stages/edit.py``, with its own worker). Resume, live tracking and the object-store
hand-off are :mod:`stages.runs`'.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.augment import augmenter, check_augmentation
from pipeline.config import ConfigError, Params
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import fingerprint, read_json
from pipeline.models import build_model, split_model_name
from pipeline.train import (
    Classification,
    Regression,
    TrainSettings,
    data_shape,
    fit_model,
    forward_spec_from_meta,
    model_inputs,
)
from pipeline.weightspace.spec import ParamSpec
from stages.common import parse, reported_errors
from stages.runs import Job, StageRuns, TaskContext

N_CLASSES = 10
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GraphData:
    """A graphs directory in memory: ``meta.json`` and the three splits (what a task receives)."""

    meta: dict
    splits: dict[str, GraphSet]
    derived: dict = dataclasses.field(default_factory=dict)  # how splits were changed after loading

    @staticmethod
    def load(graphs_dir: str | Path) -> GraphData:
        gdir = Path(graphs_dir)
        return GraphData(read_json(gdir / "meta.json"), {s: GraphSet.load(gdir / f"{s}.safetensors") for s in SPLITS})

    @property
    def version(self) -> str:
        """The data version: a hash of the graphs' metadata (spec, statistics, counts) and of
        whatever was derived from them."""
        return fingerprint([self.meta, self.derived]) if self.derived else fingerprint(self.meta)


def train_one(
    data: GraphData, model_name: str, model_cfg, seed: int, ctx: TaskContext, settings: TrainSettings, augment: str
) -> dict:
    """Build and train one model on ``data``; return its result as a plain dict."""
    device, where = ctx.start()
    torch.manual_seed(seed)
    meta, splits = data.meta, data.splits
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    if meta.get("kind", "classification") == "classification":
        objective = Classification(int(meta.get("n_targets", N_CLASSES)))
        n_out = objective.n_classes
    else:
        objective = Regression.fit(splits["train"].y)
        n_out = objective.n_targets
    fwd = forward_spec_from_meta(meta) if "forward" in meta else None
    shape = data_shape(splits["train"], template, n_out, fwd)
    base, permutations = split_model_name(model_name)
    model = build_model(base, model_cfg, shape)
    inputs = {s: model_inputs(g, template, model.input_kind) for s, g in splits.items()}
    t0 = time.time()
    sel = objective.select

    def progress(row: dict) -> None:  # shown in the driver's output (Ray forwards worker prints)
        print(
            f"{model_name} seed {seed}: epoch {int(row['epoch'])}/{settings.epochs} "
            f"train loss {row['train_loss']:.3f} val {sel} {row[f'val_{sel}']:.3f} ({row['epoch_seconds']:.0f} s)",
            flush=True,
        )
        ctx.epoch(row)

    res = fit_model(
        model,
        inputs["train"],
        inputs["val"],
        inputs["test"],
        settings,
        seed,
        objective,
        on_epoch=progress,
        augment=augmenter(augment, model.input_kind, template.spec, permutations),
        device=device,
    )
    out = dataclasses.asdict(res)
    out.update(model=model_name, seed=seed, wall_seconds=time.time() - t0, config=dataclasses.asdict(model_cfg))
    out.update(best_val_metric=res.best_val, **{f"test_{k}": v for k, v in res.test.items()}, **where)
    if sel == "acc":
        out["best_val_acc"] = res.best_val
    return out


def final_metrics(r: dict) -> dict[str, float]:
    """What MLflow shows for a finished run (test metrics at the best validation epoch)."""
    return {
        **{f"test_{k}": v for k, v in r["test"].items()},
        f"best_val_{r['select']}": r["best_val"],
        "best_epoch": r["best_epoch"],
        "n_params": r["n_params"],
        "seconds_per_epoch": r["seconds_per_epoch"],
    }


def run_training(
    params: Params,
    data: GraphData,
    out: Path,
    models: list[str],
    seeds: list[int],
    settings: TrainSettings,
    model_configs: dict,
    augment: str,
    threads: int,
    stage: str,
    worker=None,
    extra: dict | None = None,
) -> list[dict]:
    """Train every (model, seed) on ``data`` as Ray tasks (resumable, tracked live); write JSON.

    ``worker(data, model, model_settings, seed, ctx, train_settings, augment, *extra.values())``
    runs one job and returns its result dict (default :func:`train_one`); ``extra`` (JSON-able
    settings of the worker) enters the runs' fingerprints and MLflow params.
    """
    extra = extra or {}
    try:
        check_augmentation(augment, ParamSpec.from_dict(data.meta["spec"]))
    except ValueError as e:
        raise ConfigError(f"{stage.split('@')[0]}.augment: {e}") from e
    jobs = [Job(m, s, model_configs[split_model_name(m)[0]]) for m in models for s in seeds]
    run_settings = dataclasses.asdict(settings) | {"augment": augment} | extra
    runs = StageRuns(params, stage, out, jobs, data.version, run_settings, final_metrics)
    results = runs.run(data, worker or train_one, (settings, augment, *extra.values()), threads)
    for r in results:
        sel = r["select"]
        print(
            f"{stage}: {r['model']:>8} seed {r['seed']}: test {sel} {r['test'][sel]:.4f} at best val epoch "
            f"{r['best_epoch']} ({r['seconds_per_epoch']:.1f} s/epoch)"
        )
    return results


def run(params: Params, graphs_dir: Path, out: Path) -> list[dict]:
    tc = params.train
    settings = TrainSettings(tc.epochs, tc.batch_size, tc.lr, tc.weight_decay, tc.warmup_steps, tc.grad_clip)
    configs = tc.settings_by_model()
    data = GraphData.load(graphs_dir)
    return run_training(
        params, data, out, tc.models, tc.seeds, settings, configs, tc.augment, tc.threads_per_task, "train"
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"graphs": "data/graphs", "out": "data/train"}, argv)
    with reported_errors("train"):
        run(params, Path(args.graphs), Path(args.out))


if __name__ == "__main__":
    main()
