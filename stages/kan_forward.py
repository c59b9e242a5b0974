"""DVC stage ``kan_forward``: the WS-KAN expressivity check on the KAN-INR zoo, as Ray tasks.

Every (model, seed) of ``kan.forward`` learns to predict a KAN-INR's own output at a query
point from its KAN-graph (:mod:`pipeline.kan_forward`), on fresh points every step; validation
and test KANs are held out. Results (with the position-only reference) go to
``<out>/results.json`` in the format of the other training stages, and to MLflow.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.config import ConfigError, Params, to_flat_dict
from pipeline.io import fingerprint, read_json, write_json
from pipeline.kan_forward import ForwardData, ForwardSettings, fit_forward, settings_from
from pipeline.models import build_model
from pipeline.zoo.kan_zoo import GRID_RANGE, load_kan_zoo
from stages.common import parse

SPLITS = ("train", "val", "test")


def load_forward_data(zoo_dir: str | Path) -> ForwardData:
    """The KAN-INR zoo (hashes checked) as a :class:`ForwardData`, non-finite nets left out."""
    spec, params, rows, _ = load_kan_zoo(zoo_dir)
    finite = torch.ones(len(rows), dtype=torch.bool)
    for v in params.values():
        finite &= torch.isfinite(v.flatten(1)).all(1)
    splits = {s: torch.tensor([i for i, r in enumerate(rows) if r["split"] == s and bool(finite[i])]) for s in SPLITS}
    for s, idx in splits.items():
        if idx.numel() == 0:
            raise SystemExit(f"kan_forward: no usable KAN in split {s!r} of {zoo_dir}")
    return ForwardData.build(params, spec, splits, GRID_RANGE)


def train_one(zoo_dir: str, model_name: str, model_cfg, settings: ForwardSettings, seed: int, threads: int) -> dict:
    """Build and train one model on the forward task; return its result as a plain dict."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = load_forward_data(zoo_dir)
    model = build_model(model_name, model_cfg, data.shape())
    if getattr(model, "input_kind", None) != "graph":
        raise ConfigError(f"kan.forward.models: {model_name!r} does not read graphs")
    t0 = time.time()

    def progress(row: dict) -> None:  # shown in the driver's output (Ray forwards worker prints)
        print(
            f"kan_forward {model_name} seed {seed}: step {int(row['step'])}/{settings.steps} "
            f"train loss {row['train_loss']:.3f} val R² {row['val_r2']:.3f} ({row['epoch_seconds']:.0f} s)",
            flush=True,
        )

    res = fit_forward(model, data, settings, seed, on_eval=progress)
    out = dataclasses.asdict(res)
    out.update(model=model_name, seed=seed, wall_seconds=time.time() - t0, config=dataclasses.asdict(model_cfg))
    out["counts"] = {s: int(v.numel()) for s, v in data.splits.items()}
    return out


def run(params: Params, zoo_dir: Path, out: Path) -> list[dict]:
    from pipeline import distributed, tracking

    fc = params.kan.forward
    settings = settings_from(fc)
    configs = fc.settings_by_model()
    jobs = [(m, s) for m in fc.models for s in fc.seeds]
    data_version = fingerprint(
        {"zoo": read_json(zoo_dir / "zoo.json"), "manifest": (zoo_dir / "manifest.csv").read_text()}
    )
    results: list[dict] = [{} for _ in jobs]
    with tracking.stage_run(
        params.mlflow, "kan_forward", to_flat_dict(params), {"data_version": data_version}
    ) as parent:
        resources = distributed.init_ray(params.ray)
        distributed.check_resources(resources, fc.threads_per_task, params.ray.gpus_per_task)
        items = [(str(zoo_dir.resolve()), m, configs[m], settings, s, fc.threads_per_task) for m, s in jobs]

        def log(i: int, r: dict) -> None:
            results[i] = r
            write_json(out / f"{r['model']}_seed{r['seed']}.json", r)
            tracking.log_child_run(
                f"{r['model']}-seed{r['seed']}",
                {"model": r["model"], "seed": r["seed"], **{f"model.{k}": v for k, v in r["config"].items()}}
                | dataclasses.asdict(settings),
                {"model": r["model"], "data_version": data_version, "parent_stage": "kan_forward"},
                r["history"],
                {
                    **{f"test_{k}": v for k, v in r["test"].items()},
                    **{f"reference_test_{k}": v for k, v in r["reference"].items()},
                    "best_val_r2": r["best_val"],
                    "best_epoch": r["best_epoch"],
                    "n_params": r["n_params"],
                    "seconds_per_epoch": r["seconds_per_epoch"],
                },
            )

        distributed.map_tasks(
            train_one,
            items,
            num_cpus=fc.threads_per_task,
            num_gpus=params.ray.gpus_per_task,
            max_retries=params.ray.max_retries,
            desc="kan_forward runs",
            on_result=log,
        )
        run_id = parent.info.run_id
    write_json(out / "results.json", {"parent_run_id": run_id, "data_version": data_version, "runs": results})
    for r in results:
        print(
            f"kan_forward: {r['model']:>8} seed {r['seed']}: test R² {r['test']['r2']:.4f} at best val evaluation "
            f"{r['best_epoch']} (position-only reference {r['reference']['r2']:.4f})"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"zoo": "data/kan/inr/zoo", "out": "data/kan/inr_forward/train"}, argv)
    run(params, Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
