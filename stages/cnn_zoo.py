"""DVC stage ``cnn_zoo@<family>``: a zoo of CNN classifiers (``homogeneous`` or
``heterogeneous``), one architecture per shard, shards as Ray tasks, resumable."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.config import CnnConfig, Params, to_flat_dict
from pipeline.device import resolve_device
from pipeline.distributed import task_device
from pipeline.io import tensors_hash, write_json
from pipeline.provenance import fit_environment
from pipeline.zoo.cnn import CNNArch, cnn_spec
from pipeline.zoo.cnn_zoo import (
    CNN_FAMILIES,
    CNN_HYPER_FIELDS,
    CNNRanges,
    PlannedRun,
    fit_cnn_shard,
    mnist_task,
    plan_cnn_zoo,
    zoo_architectures,
)
from pipeline.zoo.store import read_planned_shard, shard_name, write_rows, write_shard
from stages.common import fit_missing_shards, parse, reported_errors

FAMILY_SEED = {"homogeneous": 5, "heterogeneous": 6}  # offsets of each family's seeds from params.seed


def ranges(c: CnnConfig) -> CNNRanges:
    """The per-run hyper-parameter ranges of ``cnn`` in ``params.yaml``."""
    return CNNRanges(
        tuple(c.lr),
        tuple(c.weight_decay),
        tuple(c.init_scale),
        tuple(c.dropout),
        tuple(c.label_noise),
        tuple(c.train_fraction),
        tuple(c.steps),
        c.batch_size,
        c.checkpoints,
    )


def plan(params: Params, family: str) -> tuple[list[CNNArch], list[tuple[int, list[PlannedRun]]]]:
    """The family's architectures and its shards: ``(architecture index, runs)``, at most
    ``cnn.shard_size`` runs of one architecture each."""
    fc = params.cnn.homogeneous if family == "homogeneous" else params.cnn.heterogeneous
    seed = params.seed * 10 + FAMILY_SEED[family]
    archs = zoo_architectures(family, fc.n_architectures, seed)
    runs = plan_cnn_zoo(len(archs), fc.runs_per_architecture, fc.n_val, fc.n_test, seed)
    shards = []
    for a in range(len(archs)):
        mine = [r for r in runs if r.arch_index == a]
        shards += [(a, mine[i : i + params.cnn.shard_size]) for i in range(0, len(mine), params.cnn.shard_size)]
    return archs, shards


def _fit_task(
    data: dict, arch: CNNArch, runs: list[PlannedRun], r: CNNRanges, chunk: int, threads: int, device: str
) -> tuple[dict, dict]:
    """One shard as a Ray task: the digits arrive from the object store, tensors go back."""
    torch.set_num_threads(threads)  # fixed: reduction order, hence bytes, must not depend on the worker
    return fit_cnn_shard(arch, runs, data, r, chunk, resolve_device(device))


def run(params: Params, family: str, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    from pipeline import tracking

    if family not in CNN_FAMILIES:
        raise SystemExit(f"cnn_zoo: unknown family {family!r}; choose from {CNN_FAMILIES}")
    c = params.cnn
    archs, shards = plan(params, family)
    data = mnist_task(params.seed, c.digits_test)
    r = ranges(c)
    device = task_device(params.ray)
    recipe = {
        "family": family,
        "ranges": dataclasses.asdict(r),
        "chunk_size": c.chunk_size,
        "threads_per_task": c.threads_per_task,
        "digits_test": c.digits_test,
        "environment": fit_environment("stages.cnn_zoo"),  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(data),  # the digits' bytes: a new data release or normalisation refits
        "device": device,
    }
    fps = [fingerprint_shard(recipe, archs[a], runs) for a, runs in shards]
    shard_dir = out / "shards"

    def item(k: int) -> tuple:
        a, runs = shards[k]
        return archs[a], runs, r, c.chunk_size, c.threads_per_task, device

    def write(k: int, result: tuple[dict, dict]) -> None:
        write_shard(shard_dir / shard_name(k), result[0], cnn_spec(archs[shards[k][0]]), result[1], fps[k])

    with tracking.stage_run(params.mlflow, f"cnn_zoo@{family}", to_flat_dict(params), {"cnn_family": family}):
        t0 = time.time()
        desc = f"{family} CNN shards"
        n_fitted = fit_missing_shards(
            params, shard_dir, fps, data, item, _fit_task, write, c.threads_per_task, desc, recipe
        )
        fit_seconds = time.time() - t0
        split_of = {run.run_id: run.split for _, runs in shards for run in runs}
        rows = []
        for k, (a, runs) in enumerate(shards):
            ids = [run.run_id * r.checkpoints + j for run in runs for j in range(r.checkpoints)]
            _, extras, hashes = read_planned_shard(shard_dir / shard_name(k), cnn_spec(archs[a]), ids)
            for i, h in enumerate(hashes):
                run_id = int(extras["run_id"][i])
                row = {"net_id": int(extras["net_id"][i]), "run_id": run_id, "arch_index": a}
                row |= {"split": split_of[run_id], "checkpoint": int(extras["checkpoint"][i])}
                row |= {"step": int(extras["step"][i]), "test_acc": f"{float(extras['test_acc'][i]):.6g}"}
                row |= {f: f"{float(extras[f][i]):.6g}" for f in CNN_HYPER_FIELDS}
                rows.append(row | {"shard": shard_name(k), "sha256": h})
        write_rows(out / "manifest.csv", rows)
        acc = torch.tensor([float(row["test_acc"]) for row in rows])
        summary = {
            "n_nets": len(rows),
            "n_runs": len(split_of),
            "n_architectures": len(archs),
            "test_acc_mean": float(acc.mean()),
            "test_acc_std": float(acc.std()),
            "test_acc_min": float(acc.min()),
            "test_acc_max": float(acc.max()),
        }
        info = {
            "family": family,
            "architectures": [arch.to_dict() for arch in archs],
            "recipe": recipe,
            "summary": summary,
        }
        write_json(out / "zoo.json", info)
        tracking.log_metrics(params.mlflow, {k: float(v) for k, v in summary.items()} | {"fit_seconds": fit_seconds})
        tracking.log_metrics(params.mlflow, {"shards_fitted": n_fitted})
    print(f"cnn_zoo@{family}: {summary}")
    return summary


def fingerprint_shard(recipe: dict, arch: CNNArch, runs: list[PlannedRun]) -> str:
    """Identifies the work a shard stands for: the recipe, its architecture and its runs."""
    from pipeline.io import fingerprint

    return fingerprint({"recipe": recipe, "arch": arch.to_dict(), "runs": [dataclasses.asdict(x) for x in runs]})


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"family": "homogeneous", "out": ""}, argv)
    out = Path(args.out or f"data/cnn/{args.family}/zoo")
    with reported_errors(f"cnn_zoo@{args.family}", out):
        run(params, args.family, out)


if __name__ == "__main__":
    main()
