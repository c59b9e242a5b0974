"""The SIREN INR zoo family: planning and fitting it shard by shard (no Ray here: the stage fans
these out, :mod:`pipeline.zoo.family`).

The plan fixes, from params alone, which net fits which image with which seed and which shard
holds it. Shards are therefore the same whatever the number of workers, and a shard's bytes
depend only on its own plan entry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.data import load_images, split_indices
from pipeline.io import fingerprint, tensors_hash
from pipeline.weightspace.spec import ParamSpec, unflatten
from pipeline.zoo.family import ShardResult, ZooFamily, ZooPlan
from pipeline.zoo.siren import FitSettings, fit_sirens, siren_spec
from pipeline.zoo.store import NetRecord, read_planned_shard, shard_name, write_manifest


@dataclass(frozen=True)
class PlannedNet:
    net_id: int
    image_index: int
    label: int
    split: str
    seed: int


def net_seed(zoo_seed: int, net_id: int) -> int:
    """Initialization seed of one net, derived from the zoo seed and the net id only."""
    return (zoo_seed * 1_000_003 + net_id * 7_919 + 12_345) % (2**31 - 1)


def plan_inr_zoo(labels: Tensor, splits: dict[str, Tensor], per_train_image: int, zoo_seed: int) -> list[PlannedNet]:
    """One net per (image, copy): ``per_train_image`` copies for train images, 1 otherwise."""
    plan: list[PlannedNet] = []
    for split, indices in splits.items():
        copies = per_train_image if split == "train" else 1
        for idx in indices.tolist():
            for _ in range(copies):
                net_id = len(plan)
                plan.append(PlannedNet(net_id, idx, int(labels[idx]), split, net_seed(zoo_seed, net_id)))
    return plan


def shard_plan(plan: list[PlannedNet], shard_size: int) -> list[list[PlannedNet]]:
    return [plan[i : i + shard_size] for i in range(0, len(plan), shard_size)]


def shard_fingerprint(settings: dict, nets: list[PlannedNet]) -> str:
    """Identifies the work a shard stands for: fit settings plus its nets' plan entries."""
    return fingerprint({"settings": settings, "nets": [asdict(n) for n in nets]})


def fit_shard(
    nets: list[PlannedNet],
    images: Tensor,
    spec: ParamSpec,
    settings: FitSettings,
    chunk_size: int,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Fit every net of one shard, ``chunk_size`` nets at a time (cache-sized batches).

    Args:
        nets: the shard's plan entries.
        images: ``(len(nets), H, W)``, image of each net.
        device: where the nets are fitted (:func:`pipeline.zoo.siren.fit_sirens`); results on CPU.
    Returns:
        ``(params, extras)``: params per spec tensor ``(B, ...)``; extras ``net_id``, ``mse``,
        ``psnr``, ``steps`` (all ``(B,)``).
    """
    flats, mses, psnrs, steps = [], [], [], []
    for start in range(0, len(nets), chunk_size):
        part = nets[start : start + chunk_size]
        res = fit_sirens(images[start : start + len(part)], [n.seed for n in part], spec, settings, device=device)
        flats.append(res.params)
        mses.append(res.mse)
        psnrs.append(res.psnr)
        steps.append(res.steps)
    params = {k: v.clone() for k, v in unflatten(torch.cat(flats), spec).items()}
    extras = {
        "net_id": torch.tensor([n.net_id for n in nets], dtype=torch.long),
        "mse": torch.cat(mses),
        "psnr": torch.cat(psnrs),
        "steps": torch.cat(steps),
    }
    return params, extras


def records_from_shards(
    shard_dir: Path, shards: list[list[PlannedNet]], spec: ParamSpec, psnr_floor: float
) -> list[NetRecord]:
    """Manifest rows read back from the stored shards; diverged = NaN or PSNR below the floor.

    Each row's ``sha256`` is the hash stored with its shard when it was written, after checking
    the shard's data against it (:func:`~pipeline.zoo.store.read_planned_shard`): a shard
    damaged since then raises :class:`~pipeline.io.CorruptFileError` naming it and the net
    instead of passing its damage on to the manifest, as does a shard holding other nets than
    its plan entry.
    """
    records = []
    for k, nets in enumerate(shards):
        path = shard_dir / shard_name(k)
        _, extras, hashes = read_planned_shard(path, spec, [n.net_id for n in nets])
        for n, mse, psnr, st, h in zip(
            nets, extras["mse"].tolist(), extras["psnr"].tolist(), extras["steps"].tolist(), hashes, strict=True
        ):
            bad = not math.isfinite(mse) or not math.isfinite(psnr) or psnr < psnr_floor
            records.append(
                NetRecord(n.net_id, n.image_index, n.label, n.split, n.seed, mse, psnr, int(st), bad, path.name, h)
            )
    return records


def _fit_task(
    images: Tensor, index: list[int], nets: list[PlannedNet], spec: ParamSpec, settings: FitSettings, chunk: int, device
) -> ShardResult:
    """One shard's task: ``images`` (every image) from the object store, the shard's own picked here."""
    return fit_shard(nets, images[index], spec, settings, chunk, device)


def zoo_plan(data: Any, zoo: Any, seed: int, device: str, environment: dict) -> ZooPlan:
    """The SIREN zoo of ``params.yaml``'s ``data`` and ``zoo`` sections: its images and splits,
    one net per (image, copy) in shards of ``zoo.shard_size``, and their fingerprints.
    ``environment``: :func:`~pipeline.provenance.fit_environment` of the stage."""
    images, labels = load_images(data.source)
    splits = split_indices(len(images), {"train": data.n_train, "val": data.n_val, "test": data.n_test}, seed)
    spec = siren_spec(zoo.hidden)
    settings = FitSettings(steps=zoo.steps, lr=zoo.lr, omega0=zoo.omega0, variant=zoo.init, target_psnr=zoo.target_psnr)
    shards = shard_plan(plan_inr_zoo(labels, splits, zoo.inrs_per_train_image, seed), zoo.shard_size)
    recipe = {
        "spec": spec.to_dict(),
        "fit": dataclasses.asdict(settings),
        "source": data.source,
        "chunk_size": zoo.chunk_size,
        "threads_per_task": zoo.threads_per_task,
        "environment": environment,  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(images),  # the bytes fitted: a new data release or normalisation refits
    }
    if device != "cpu":  # GPU bytes differ from CPU bytes: never mix them (CPU fingerprints unchanged)
        recipe["device"] = device
    return ZooPlan(
        stage="zoo",
        task=_fit_task,
        shared=images,
        shards=[([n.image_index for n in nets], nets, spec, settings, zoo.chunk_size) for nets in shards],
        specs=[spec] * len(shards),
        fingerprints=[shard_fingerprint(recipe, nets) for nets in shards],
        recipe=recipe,
        device=device,
        threads=zoo.threads_per_task,
        tags={"data_source": data.source},
        context={"nets": shards, "splits": splits, "psnr_floor": zoo.psnr_floor},
    )


def record(plan: ZooPlan, out: Path) -> tuple[dict, dict]:
    """``out/manifest.csv`` (diverged nets flagged, excluded downstream) and the summary and
    ``zoo.json`` of a fitted SIREN zoo."""
    spec, images = plan.specs[0], plan.shared
    records = records_from_shards(out / "shards", plan.context["nets"], spec, plan.context["psnr_floor"])
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
    info = {
        "spec": spec.to_dict(),
        "recipe": plan.recipe,
        "splits": {k: v.tolist() for k, v in plan.context["splits"].items()},
        "image_shape": list(images.shape[1:]),
        "summary": summary,
    }
    return summary, info


def _stage_plan(data: Any, zoo: Any, *, variant: str, seed: int, out: Path, device: str, environment: dict) -> ZooPlan:
    """The plan of this family's stage (:class:`~pipeline.zoo.family.ZooFamily`)."""
    return zoo_plan(data, zoo, seed, device, environment)


FAMILY = ZooFamily(sections=("data", "zoo"), plan=_stage_plan, record=record, out="data/zoo")
