"""DVC stage ``adapt_zoo``: binary MLP classifiers of digit pairs on clean digits, with their
baselines on the corrupted target domain (:mod:`pipeline.zoo.adapt_zoo`); shards as Ray tasks,
resumable."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.data import load_images
from pipeline.device import resolve_device
from pipeline.distributed import task_device
from pipeline.io import fingerprint, tensors_hash, write_json
from pipeline.provenance import fit_environment
from pipeline.zoo.adapt_zoo import (
    PAIRS,
    Corruption,
    PairFit,
    PlannedPairNet,
    fit_pair_shard,
    novel_pairs,
    pair_banks,
    pair_spec,
    plan_pair_zoo,
)
from pipeline.zoo.store import read_planned_shard, shard_name, write_rows, write_shard
from stages.common import fit_missing_shards, parse, reported_errors

ZOO_SEED = 7  # offset of the zoo's seed from params.seed
BASELINES = ("source_acc", "target_acc", "finetune_acc", "oracle_acc")


def pair_fit(params: Params) -> PairFit:
    z = params.adapt.zoo
    return PairFit(
        tuple(z.hidden), z.pool, z.steps, z.lr, z.batch_size, z.finetune_images, z.finetune_steps, z.finetune_lr
    )


def _fit_task(banks: dict, nets: list[PlannedPairNet], fit: PairFit, threads: int, device: str) -> tuple[dict, dict]:
    """One shard as a Ray task: the banks arrive from the object store, tensors go back."""
    torch.set_num_threads(threads)  # fixed: reduction order, hence bytes, must not depend on the worker
    return fit_pair_shard(nets, banks, fit, resolve_device(device))


def summarize(rows: list[dict], novel: list[int]) -> dict:
    """Mean baselines over the test nets (and over those of novel pairs) and the zoo's counts."""
    test = [r for r in rows if r["split"] == "test"]
    out: dict = {"n_nets": len(rows)} | {f"n_{s}": sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    for subset, rs in (("test", test), ("novel", [r for r in test if int(r["pair"]) in novel])):
        for k in BASELINES:
            vals = torch.tensor([float(r[k]) for r in rs])
            if len(vals):
                out[f"{subset}_{k}_mean"], out[f"{subset}_{k}_std"] = float(vals.mean()), float(vals.std(correction=0))
    return out


def run(params: Params, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    from pipeline import tracking

    z = params.adapt.zoo
    seed = params.seed * 10 + ZOO_SEED
    corruption = Corruption(**dataclasses.asdict(params.adapt.corruption))
    fit = pair_fit(params)
    images, digits = load_images("mnist_offline")
    banks = pair_banks(images, digits, corruption, seed, z.digits_test, z.pool, z.images_per_digit).tensors()
    plan = plan_pair_zoo(z.n_nets, z.n_val, z.n_test, z.novel_pairs, seed)
    shards = [plan[i : i + z.shard_size] for i in range(0, len(plan), z.shard_size)]
    spec = pair_spec(banks["x_source_train"].shape[-1], fit.hidden)
    device = task_device(params.ray)
    recipe = {
        "seed": seed,
        "corruption": dataclasses.asdict(corruption),
        "fit": dataclasses.asdict(fit),
        "digits_test": z.digits_test,
        "images_per_digit": z.images_per_digit,
        "threads_per_task": z.threads_per_task,
        "environment": fit_environment("stages.adapt_zoo"),  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(banks),  # the digit banks' bytes: a new data release or corruption refits
        "device": device,
    }
    fps = [fingerprint({"recipe": recipe, "nets": [dataclasses.asdict(n) for n in nets]}) for nets in shards]
    shard_dir = out / "shards"

    def item(k: int) -> tuple:
        return shards[k], fit, z.threads_per_task, device

    def write(k: int, result: tuple[dict, dict]) -> None:
        write_shard(shard_dir / shard_name(k), result[0], spec, result[1], fps[k])

    with tracking.stage_run(params.mlflow, "adapt_zoo", to_flat_dict(params), {}):
        t0 = time.time()
        n_fitted = fit_missing_shards(
            params, shard_dir, fps, banks, item, _fit_task, write, z.threads_per_task, "classifier shards", recipe
        )
        fit_seconds = time.time() - t0
        rows = []
        for k, nets in enumerate(shards):
            _, extras, hashes = read_planned_shard(shard_dir / shard_name(k), spec, [n.net_id for n in nets])
            for i, (n, h) in enumerate(zip(nets, hashes, strict=True)):
                row = {"net_id": n.net_id, "pair": n.pair, "digits": "{}-{}".format(*PAIRS[n.pair]), "split": n.split}
                row |= {b: f"{float(extras[b][i]):.6g}" for b in BASELINES}
                rows.append(row | {"shard": shard_name(k), "sha256": h})
        write_rows(out / "manifest.csv", rows)
        novel = novel_pairs(z.novel_pairs, seed)
        summary = summarize(rows, novel)
        info = {"spec": spec.to_dict(), "novel_pairs": novel, "recipe": recipe, "summary": summary}
        write_json(out / "zoo.json", info)
        tracking.log_metrics(params.mlflow, {k: float(v) for k, v in summary.items()} | {"fit_seconds": fit_seconds})
        tracking.log_metrics(params.mlflow, {"shards_fitted": n_fitted})
    print(f"adapt_zoo: {summary}")
    return summary


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"out": "data/adapt/zoo"}, argv)
    with reported_errors("adapt_zoo", Path(args.out)):
        run(params, Path(args.out))


if __name__ == "__main__":
    main()
