"""Planning and fitting an INR zoo shard by shard (no Ray here: stages fan these out).

The plan fixes, from params alone, which net fits which image with which seed and which shard
holds it. Shards are therefore the same whatever the number of workers, and a shard's bytes
depend only on its own plan entry.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from pipeline.io import fingerprint
from pipeline.weightspace.spec import ParamSpec, unflatten
from pipeline.zoo.siren import FitSettings, fit_sirens
from pipeline.zoo.store import NetRecord, read_planned_shard, shard_name


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
