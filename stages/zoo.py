"""DVC stage ``zoo``: fit a SIREN per image, shards fanned out as Ray tasks, resumable."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.data import load_images, split_indices
from pipeline.device import resolve_device
from pipeline.distributed import task_device
from pipeline.io import tensors_hash, write_json
from pipeline.provenance import fit_environment
from pipeline.weightspace.spec import ParamSpec
from pipeline.zoo.build import (
    PlannedNet,
    fit_shard,
    plan_inr_zoo,
    records_from_shards,
    shard_fingerprint,
    shard_plan,
)
from pipeline.zoo.siren import FitSettings, siren_spec
from pipeline.zoo.store import shard_name, write_manifest, write_shard
from stages.common import fit_missing_shards, parse, reported_errors


def _fit_task(
    images: torch.Tensor,
    index: list[int],
    nets: list[PlannedNet],
    spec,
    settings,
    chunk: int,
    threads: int,
    device: str,
) -> tuple[dict, dict]:
    """One shard as a Ray task: ``images`` arrive from the object store, tensors go back."""
    torch.set_num_threads(threads)  # fixed: reduction order, hence bytes, must not depend on the worker
    return fit_shard(nets, images[index], spec, settings, chunk, resolve_device(device))


@dataclass(frozen=True)
class ZooPlan:
    """Everything that fixes the zoo's bytes, from the params alone."""

    images: torch.Tensor
    splits: dict[str, torch.Tensor]
    spec: ParamSpec
    settings: FitSettings
    shards: list[list[PlannedNet]]
    recipe: dict
    fingerprints: list[str]
    device: str


def plan_zoo(params: Params) -> ZooPlan:
    """The images, split, nets, shards and their fingerprints that ``params`` define."""
    zc = params.zoo
    images, labels = load_images(params.data.source)
    sizes = {"train": params.data.n_train, "val": params.data.n_val, "test": params.data.n_test}
    splits = split_indices(len(images), sizes, params.seed)
    spec = siren_spec(zc.hidden)
    settings = FitSettings(steps=zc.steps, lr=zc.lr, omega0=zc.omega0, variant=zc.init, target_psnr=zc.target_psnr)
    shards = shard_plan(plan_inr_zoo(labels, splits, zc.inrs_per_train_image, params.seed), zc.shard_size)
    device = task_device(params.ray)
    recipe = {
        "spec": spec.to_dict(),
        "fit": dataclasses.asdict(settings),
        "source": params.data.source,
        "chunk_size": zc.chunk_size,
        "threads_per_task": zc.threads_per_task,
        "environment": fit_environment("stages.zoo"),  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(images),  # the bytes fitted: a new data release or normalisation refits
    }
    if device != "cpu":  # GPU bytes differ from CPU bytes: never mix them (CPU fingerprints unchanged)
        recipe["device"] = device
    fps = [shard_fingerprint(recipe, nets) for nets in shards]
    return ZooPlan(images, splits, spec, settings, shards, recipe, fps, device)


def fit_shard_here(plan: ZooPlan, k: int, params: Params) -> tuple[dict, dict]:
    """Shard ``k`` fitted in this process, exactly as its Ray task fits it (reference runs)."""
    nets = plan.shards[k]
    index = [n.image_index for n in nets]
    zc = params.zoo
    return _fit_task(plan.images, index, nets, plan.spec, plan.settings, zc.chunk_size, zc.threads_per_task, "cpu")


def run(params: Params, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    from pipeline import tracking

    zc = params.zoo
    plan = plan_zoo(params)
    images, splits, spec, settings, shards = plan.images, plan.splits, plan.spec, plan.settings, plan.shards
    recipe, fps, device = plan.recipe, plan.fingerprints, plan.device
    shard_dir = out / "shards"

    def item(k: int) -> tuple:
        nets = shards[k]
        return [n.image_index for n in nets], nets, spec, settings, zc.chunk_size, zc.threads_per_task, device

    def write(k: int, result: tuple[dict, dict]) -> None:
        write_shard(shard_dir / shard_name(k), result[0], spec, result[1], fps[k])

    with tracking.stage_run(params.mlflow, "zoo", to_flat_dict(params), {"data_source": params.data.source}):
        t0 = time.time()
        n_fitted = fit_missing_shards(
            params, shard_dir, fps, images, item, _fit_task, write, zc.threads_per_task, recipe=recipe
        )
        fit_seconds = time.time() - t0
        records = records_from_shards(shard_dir, shards, spec, zc.psnr_floor)
        write_manifest(out / "manifest.csv", records)
        ok = [r for r in records if not r.diverged]
        psnr = torch.tensor([r.psnr for r in ok]) if ok else torch.tensor([float("nan")])
        summary = {
            "n_nets": len(records),
            "n_diverged": len(records) - len(ok),
            "psnr_mean": float(psnr.mean()),
            "psnr_min": float(psnr.min()),
            "steps_mean": float(sum(r.steps for r in records) / len(records)),
        }
        write_json(
            out / "zoo.json",
            {
                "spec": spec.to_dict(),
                "recipe": recipe,
                "splits": {k: v.tolist() for k, v in splits.items()},
                "image_shape": list(images.shape[1:]),
                "summary": summary,
            },
        )
        # timings go to MLflow only: the zoo's files must not change when nothing was refitted
        tracking.log_metrics(
            params.mlflow,
            {k: float(v) for k, v in summary.items()} | {"fit_seconds": fit_seconds, "shards_fitted": n_fitted},
        )
    print(
        f"zoo: {summary['n_diverged']} diverged nets flagged in the manifest (excluded downstream); "
        f"mean PSNR {summary['psnr_mean']:.2f} dB"
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"out": "data/zoo"}, argv)
    with reported_errors("zoo", Path(args.out)):
        run(params, Path(args.out))


if __name__ == "__main__":
    main()
