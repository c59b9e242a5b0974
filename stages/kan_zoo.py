"""DVC stage ``kan_zoo@<task>``: a zoo of KANs (``inr`` or ``classifier``), shards as Ray tasks, resumable."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.data import load_images, split_indices
from pipeline.device import resolve_device
from pipeline.distributed import task_device
from pipeline.io import tensors_hash, write_json
from pipeline.provenance import fit_environment
from pipeline.weightspace.spec import ParamSpec
from pipeline.zoo.build import PlannedNet, net_seed, plan_inr_zoo, shard_fingerprint, shard_plan
from pipeline.zoo.kan import kan_backend, kan_spec
from pipeline.zoo.kan_zoo import (
    KAN_TASKS,
    ClassifierRanges,
    InrFit,
    digits_task,
    fit_kan_shard,
)
from pipeline.zoo.store import read_planned_shard, shard_name, write_rows, write_shard
from stages.common import fit_missing_shards, parse, reported_errors


def _fit_task(
    data: dict, task: str, nets: list[PlannedNet], spec: ParamSpec, fit, chunk: int, threads: int, device: str
) -> tuple[dict, dict]:
    """One shard as a Ray task, ``chunk`` nets at a time: ``data`` arrives from the object store
    (the images, or the digits), tensors go back to the driver."""
    torch.set_num_threads(threads)  # fixed: reduction order, hence bytes, must not depend on the worker
    inputs = data["images"][[n.image_index for n in nets]] if task == "inr" else data["digits"]
    params, cols = fit_kan_shard(task, [n.seed for n in nets], inputs, spec, fit, chunk, resolve_device(device))
    cols["net_id"] = torch.tensor([n.net_id for n in nets], dtype=torch.long)
    return params, cols


def kan_node() -> str:
    """A node's preparation: build (or load) the fused KAN kernel once before its shards, so
    :func:`~pipeline.provenance.worker_environment` reports the backend its tasks will use."""
    return kan_backend()


def plan(params: Params, task: str) -> tuple[list[PlannedNet], dict]:
    """The nets of one KAN task and the data they are fitted to."""
    if task == "inr":
        c = params.kan.inr
        images, labels = load_images("mnist_offline")
        splits = split_indices(len(images), {"train": c.n_train, "val": c.n_val, "test": c.n_test}, params.seed)
        return plan_inr_zoo(labels, splits, 1, params.seed + 1), {"images": images}
    c = params.kan.classifier
    nets = []
    for split, n in (("train", c.n_train), ("val", c.n_val), ("test", c.n_test)):
        for _ in range(n):
            net_id = len(nets)
            nets.append(PlannedNet(net_id, -1, -1, split, net_seed(params.seed + 2, net_id)))
    return nets, {"digits": digits_task(params.seed, c.digits_test)}


def run(params: Params, task: str, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    from pipeline import tracking

    if task not in KAN_TASKS:
        raise SystemExit(f"kan_zoo: unknown task {task!r}; choose from {KAN_TASKS}")
    kc = params.kan
    cfg = kc.inr if task == "inr" else kc.classifier
    nets, data = plan(params, task)
    if task == "inr":
        spec = kan_spec([2, *cfg.hidden, 1], cfg.grid, cfg.order)
        fit = InrFit(cfg.steps, cfg.lr)
    else:
        spec = kan_spec([16, *cfg.hidden, 10], cfg.grid, cfg.order)
        fit = ClassifierRanges(
            tuple(cfg.lr), tuple(cfg.weight_decay), tuple(cfg.steps), tuple(cfg.label_noise), tuple(cfg.train_fraction)
        )
    shards = shard_plan(nets, kc.shard_size)
    device = task_device(params.ray)
    recipe = {
        "task": task,
        "spec": spec.to_dict(),
        "fit": dataclasses.asdict(fit),
        "chunk_size": kc.chunk_size,
        "threads_per_task": kc.threads_per_task,
        # fused C++ kernel or PyTorch ops (on CPU or a GPU): equal up to float32 rounding, not bytes
        "backend": kan_backend() if device == "cpu" else f"torch-{device}",
        "environment": fit_environment("stages.kan_zoo"),  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(data),  # the images or digits' bytes: a new data release or normalisation refits
    }
    fps = [shard_fingerprint(recipe, s) for s in shards]
    shard_dir = out / "shards"

    def item(k: int) -> tuple:
        return task, shards[k], spec, fit, kc.chunk_size, kc.threads_per_task, device

    def write(k: int, result: tuple[dict, dict]) -> None:
        write_shard(shard_dir / shard_name(k), result[0], spec, result[1], fps[k])

    with tracking.stage_run(params.mlflow, f"kan_zoo@{task}", to_flat_dict(params), {"kan_task": task}):
        t0 = time.time()
        desc = f"{task} KAN shards"
        n_fitted = fit_missing_shards(
            params, shard_dir, fps, data, item, _fit_task, write, kc.threads_per_task, desc, recipe,
            prepare=kan_node if device == "cpu" else None,
        )  # fmt: skip
        fit_seconds = time.time() - t0
        rows = []
        for k, s in enumerate(shards):
            # the hashes stored with the shard when it was written, after checking its data against them
            _, extras, hashes = read_planned_shard(shard_dir / shard_name(k), spec, [n.net_id for n in s])
            for i, (n, h) in enumerate(zip(s, hashes, strict=True)):
                row = {"net_id": n.net_id, "split": n.split, "seed": n.seed}
                if task == "inr":
                    row |= {"image_index": n.image_index, "label": n.label}
                row |= {c: f"{float(extras[c][i]):.6g}" for c in sorted(extras) if c != "net_id"}
                rows.append(row | {"shard": shard_name(k), "sha256": h})
        write_rows(out / "manifest.csv", rows)
        metric = "psnr" if task == "inr" else "test_acc"
        vals = torch.tensor([float(r[metric]) for r in rows])
        finite = vals[torch.isfinite(vals)]
        summary = {
            "n_nets": len(rows),
            "n_nonfinite": int((~torch.isfinite(vals)).sum()),
            f"{metric}_mean": float(finite.mean()),
            f"{metric}_std": float(finite.std()),
            f"{metric}_min": float(finite.min()),
            f"{metric}_max": float(finite.max()),
        }
        write_json(out / "zoo.json", {"task": task, "spec": spec.to_dict(), "recipe": recipe, "summary": summary})
        timing = {"fit_seconds": fit_seconds, "shards_fitted": n_fitted}
        tracking.log_metrics(params.mlflow, {k: float(v) for k, v in summary.items()} | timing)
    print(f"kan_zoo@{task}: {summary}")
    return summary


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"task": "inr", "out": ""}, argv)
    out = Path(args.out or f"data/kan/{args.task}/zoo")
    with reported_errors(f"kan_zoo@{args.task}", out):
        run(params, args.task, out)


if __name__ == "__main__":
    main()
