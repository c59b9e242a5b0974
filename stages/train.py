"""DVC stage ``train``: every (model, seed) as a Ray task; the driver logs each to MLflow.

:func:`run_training` is shared with the KAN stages (``stages/kan_train.py``) and the editing
stage (``stages/edit.py``, with its own worker).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.augment import augmenter, check_augmentation
from pipeline.config import ConfigError, Params, to_flat_dict
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import fingerprint, read_json, write_json
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
from stages.common import parse

N_CLASSES = 10


def train_one(
    graphs_dir: str, model_name: str, model_cfg, settings: TrainSettings, augment: str, seed: int, threads: int
) -> dict:
    """Load the splits, build and train one model; return its result as a plain dict."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gdir = Path(graphs_dir)
    meta = read_json(gdir / "meta.json")
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    splits = {s: GraphSet.load(gdir / f"{s}.safetensors") for s in ("train", "val", "test")}
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
    data = {s: model_inputs(g, template, model.input_kind) for s, g in splits.items()}
    t0 = time.time()
    sel = objective.select

    def progress(row: dict) -> None:  # shown in the driver's output (Ray forwards worker prints)
        print(
            f"{model_name} seed {seed}: epoch {int(row['epoch'])}/{settings.epochs} "
            f"train loss {row['train_loss']:.3f} val {sel} {row[f'val_{sel}']:.3f} ({row['epoch_seconds']:.0f} s)",
            flush=True,
        )

    res = fit_model(
        model,
        data["train"],
        data["val"],
        data["test"],
        settings,
        seed,
        objective,
        on_epoch=progress,
        augment=augmenter(augment, model.input_kind, template.spec, permutations),
    )
    out = dataclasses.asdict(res)
    out.update(model=model_name, seed=seed, wall_seconds=time.time() - t0, config=dataclasses.asdict(model_cfg))
    out.update(best_val_metric=res.best_val, **{f"test_{k}": v for k, v in res.test.items()})
    if sel == "acc":
        out["best_val_acc"] = res.best_val
    return out


def run_training(
    params: Params,
    graphs_dir: Path,
    out: Path,
    models: list[str],
    seeds: list[int],
    settings: TrainSettings,
    model_configs: dict,
    augment: str,
    threads: int,
    stage: str,
    worker=None,
    worker_args: tuple = (),
) -> list[dict]:
    """Train every (model, seed) on one graph directory as Ray tasks; log to MLflow; write JSON.

    ``worker(graphs_dir, model, settings, train_settings, augment, seed, threads, *worker_args)``
    runs one job and returns its result dict (default :func:`train_one`).
    """
    from pipeline import distributed, tracking

    jobs = [(m, s) for m in models for s in seeds]
    meta = read_json(graphs_dir / "meta.json")
    data_version = fingerprint(meta)
    try:
        check_augmentation(augment, ParamSpec.from_dict(meta["spec"]))
    except ValueError as e:
        raise ConfigError(f"train.augment: {e}") from e
    results: list[dict] = [{} for _ in jobs]
    with tracking.stage_run(params.mlflow, stage, to_flat_dict(params), {"data_version": data_version}) as parent:
        resources = distributed.init_ray(params.ray)
        distributed.check_resources(resources, threads, params.ray.gpus_per_task)
        items = [
            (str(graphs_dir.resolve()), m, model_configs[split_model_name(m)[0]], settings, augment, s, threads)
            + worker_args
            for m, s in jobs
        ]

        def log(i: int, r: dict) -> None:
            results[i] = r
            write_json(out / f"{r['model']}_seed{r['seed']}.json", r)
            tracking.log_child_run(
                f"{r['model']}-seed{r['seed']}",
                {
                    "model": r["model"],
                    "seed": r["seed"],
                    **{f"model.{k}": v for k, v in r["config"].items()},
                    **dataclasses.asdict(settings),
                },
                {"model": r["model"], "data_version": data_version, "parent_stage": stage},
                r["history"],
                {
                    **{f"test_{k}": v for k, v in r["test"].items()},
                    f"best_val_{r['select']}": r["best_val"],
                    "best_epoch": r["best_epoch"],
                    "n_params": r["n_params"],
                    "seconds_per_epoch": r["seconds_per_epoch"],
                },
            )

        distributed.map_tasks(
            worker or train_one,
            items,
            num_cpus=threads,
            num_gpus=params.ray.gpus_per_task,
            max_retries=params.ray.max_retries,
            desc=f"{stage} runs",
            on_result=log,
        )
        run_id = parent.info.run_id
    write_json(out / "results.json", {"parent_run_id": run_id, "data_version": data_version, "runs": results})
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
    return run_training(
        params, graphs_dir, out, tc.models, tc.seeds, settings, configs, tc.augment, tc.threads_per_task, "train"
    )


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"graphs": "data/graphs", "out": "data/train"}, argv)
    run(params, Path(args.graphs), Path(args.out))


if __name__ == "__main__":
    main()
