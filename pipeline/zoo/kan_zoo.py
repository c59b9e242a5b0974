"""The two KAN zoo tasks: what each net is fitted to, with which hyper-parameters.

* ``inr``: one KAN-INR per MNIST image, ``(x, y) in [-1, 1]^2 -> intensity``, full-batch MSE on
  the 28x28 grid; labelled by digit (classification target).
* ``classifier``: KAN classifiers of scikit-learn's 8x8 digits pooled to 4x4 (16 inputs in
  ``[-1, 1]``, 10 logits), each with its own learning rate, weight decay, step count, label
  noise and training fraction drawn from its seed, so that test accuracies spread; the target
  is the test accuracy on a held-out digit split shared by every net.

Every net of a chunk is trained at once by :func:`pipeline.zoo.kan.train_kans` on pykan's
initialization and fixed uniform knots (no grid update: the knots are then the same for every
net and the graph carries no grid information, see ``docs/methods.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.data import coordinate_grid, load_images, psnr_from_mse, split_indices
from pipeline.io import tensors_hash
from pipeline.optim import AdamSettings
from pipeline.weightspace.spec import Params, ParamSpec
from pipeline.zoo.build import PlannedNet, net_seed, plan_inr_zoo, shard_fingerprint, shard_plan
from pipeline.zoo.family import ShardResult, ZooFamily, ZooPlan
from pipeline.zoo.kan import init_kans, kan_backend, kan_forward, kan_spec, train_kans
from pipeline.zoo.store import load_spec_zoo, read_planned_shard, shard_name, write_rows

KAN_TASKS = ("inr", "classifier")
GRID_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class InrFit:
    """Full-batch Adam on the pixel grid, the same for every KAN-INR."""

    steps: int
    lr: float


def _on(params: Params, device: torch.device) -> Params:
    return {k: v.to(device) for k, v in params.items()}


def fit_kan_inrs(
    images: Tensor, seeds: list[int], spec: ParamSpec, fit: InrFit, device: torch.device | str = "cpu"
) -> tuple[Params, dict[str, Tensor]]:
    """Fit one KAN-INR per image, all at once, on ``device`` (initial values drawn on the CPU).

    Args:
        images: ``(B, H, W)`` in ``[0, 1]``.
    Returns:
        ``(params, extras)`` on ``device``, with extras ``mse`` and ``psnr`` ``(B,)``.
    """
    B, H, W = images.shape
    coords = coordinate_grid(H, W).to(device)
    target = images.reshape(B, H * W, 1).float().to(device)

    def loss_fn(p: Params) -> Tensor:
        return (kan_forward(p, spec, coords, uniform=GRID_RANGE) - target).square().mean(dim=(1, 2))

    params = _on(init_kans(spec, seeds, grid_range=GRID_RANGE), target.device)
    lr = torch.full((B,), fit.lr, device=target.device)
    trained, _ = train_kans(params, spec, loss_fn, AdamSettings(fit.steps), lr)
    with torch.no_grad():
        mse = loss_fn(trained)
    return trained, {"mse": mse, "psnr": psnr_from_mse(mse)}


@dataclass(frozen=True)
class ClassifierRanges:
    """Ranges the per-net hyper-parameters are drawn from (log-uniform for lr and decay)."""

    lr: tuple[float, float]
    weight_decay: tuple[float, float]
    steps: tuple[int, ...]
    label_noise: tuple[float, float]
    train_fraction: tuple[float, float]


HYPER_FIELDS = ("lr", "weight_decay", "steps", "label_noise", "train_fraction")


def draw_hyper(seed: int, ranges: ClassifierRanges) -> dict[str, float]:
    """One net's hyper-parameters, from its own seed only."""
    g = torch.Generator().manual_seed(int(seed) + 1)
    u = torch.rand(5, generator=g, dtype=torch.float64).tolist()

    def log_uniform(lo: float, hi: float, v: float) -> float:
        return math.exp(math.log(lo) + v * (math.log(hi) - math.log(lo)))

    return {
        "lr": log_uniform(*ranges.lr, u[0]),
        "weight_decay": log_uniform(*ranges.weight_decay, u[1]),
        "steps": int(ranges.steps[min(int(u[2] * len(ranges.steps)), len(ranges.steps) - 1)]),
        "label_noise": ranges.label_noise[0] + u[3] * (ranges.label_noise[1] - ranges.label_noise[0]),
        "train_fraction": ranges.train_fraction[0] + u[4] * (ranges.train_fraction[1] - ranges.train_fraction[0]),
    }


def digits_task(seed: int, n_test: int = 500) -> dict[str, Tensor]:
    """scikit-learn digits, 2x2-average-pooled to 4x4, scaled to ``[-1, 1]``, split once.

    Returns ``x_train (N, 16)``, ``y_train``, ``x_test``, ``y_test``.
    """
    images, labels = load_images("digits_offline")
    pooled = torch.nn.functional.avg_pool2d(images.unsqueeze(1), 2).flatten(1) * 2 - 1
    splits = split_indices(len(images), {"train": len(images) - n_test, "test": n_test}, seed)
    return {
        "x_train": pooled[splits["train"]],
        "y_train": labels[splits["train"]],
        "x_test": pooled[splits["test"]],
        "y_test": labels[splits["test"]],
    }


def _subset_and_labels(hyper: dict[str, float], seed: int, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Per-net training mask ``(N,)`` and noisy labels ``(N,)`` from the net's seed."""
    g = torch.Generator().manual_seed(int(seed) + 2)
    n = y.numel()
    keep = torch.zeros(n)
    keep[torch.randperm(n, generator=g)[: max(int(round(hyper["train_fraction"] * n)), n_classes)]] = 1.0
    noisy = torch.rand(n, generator=g) < hyper["label_noise"]
    random_labels = torch.randint(0, n_classes, (n,), generator=g)
    return keep, torch.where(noisy, random_labels, y)


def fit_kan_classifiers(
    data: dict[str, Tensor],
    seeds: list[int],
    spec: ParamSpec,
    ranges: ClassifierRanges,
    device: torch.device | str = "cpu",
) -> tuple[Params, dict[str, Tensor]]:
    """Train one KAN classifier per seed, each with its own hyper-parameters, all at once, on
    ``device`` (hyper-parameters, subsets, noisy labels and initial values drawn on the CPU).

    Returns ``(params, extras)`` on ``device``: extras ``test_acc``, ``train_acc`` (on its own
    noisy subset), ``train_loss`` and every field of :data:`HYPER_FIELDS`, each ``(B,)``.
    """
    device = torch.device(device)
    n_classes = spec.layer_sizes[-1]
    hypers = [draw_hyper(s, ranges) for s in seeds]
    pairs = [_subset_and_labels(h, s, data["y_train"], n_classes) for h, s in zip(hypers, seeds, strict=True)]
    weight = torch.stack([p[0] for p in pairs])
    weight = (weight / weight.sum(1, keepdim=True)).to(device)
    labels = torch.stack([p[1] for p in pairs]).to(device)
    data = {k: v.to(device) for k, v in data.items()}

    def loss_fn(p: Params) -> Tensor:
        logits = kan_forward(p, spec, data["x_train"], uniform=GRID_RANGE)  # (B, N, classes)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return (ce * weight).sum(1)

    col = {k: torch.tensor([h[k] for h in hypers], dtype=torch.float32, device=device) for k in HYPER_FIELDS}
    params = _on(init_kans(spec, seeds, grid_range=GRID_RANGE), device)
    settings = AdamSettings(int(max(h["steps"] for h in hypers)))
    trained, _ = train_kans(params, spec, loss_fn, settings, col["lr"], col["weight_decay"], col["steps"].long())
    with torch.no_grad():
        train_loss = loss_fn(trained)
        train_pred = kan_forward(trained, spec, data["x_train"], uniform=GRID_RANGE).argmax(-1)
        test_pred = kan_forward(trained, spec, data["x_test"], uniform=GRID_RANGE).argmax(-1)
    extras = {
        "test_acc": (test_pred == data["y_test"]).float().mean(1),
        "train_acc": ((train_pred == labels).float() * weight).sum(1),
        "train_loss": train_loss,
        **col,
    }
    return trained, extras


def fit_kan_shard(
    task: str,
    seeds: list[int],
    inputs,
    spec: ParamSpec,
    fit: InrFit | ClassifierRanges,
    chunk: int,
    device: torch.device | str = "cpu",
) -> tuple[Params, dict[str, Tensor]]:
    """Fit the nets of one shard, ``chunk`` at a time, on ``device``; results in the order of
    ``seeds``, on the CPU. (The fused C++ spline kernel is the CPU path; elsewhere PyTorch ops.)

    ``inr``: ``inputs`` are the nets' images ``(B, H, W)``. ``classifier``: ``inputs`` is the
    :func:`digits_task` dict; nets are chunked in order of their drawn step counts, so a chunk
    of short runs does not pay for the longest one (the order depends on the seeds only).
    """
    order = list(range(len(seeds)))
    if task == "classifier":
        order.sort(key=lambda i: draw_hyper(seeds[i], fit)["steps"])
    parts: list[tuple[Params, dict[str, Tensor]]] = []
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        chunk_seeds = [seeds[i] for i in idx]
        if task == "inr":
            part = fit_kan_inrs(inputs[idx], chunk_seeds, spec, fit, device)
        else:
            part = fit_kan_classifiers(inputs, chunk_seeds, spec, fit, device)
        parts.append((_on(part[0], torch.device("cpu")), _on(part[1], torch.device("cpu"))))
    back = torch.argsort(torch.tensor(order))
    params = {t.name: torch.cat([p[t.name] for p, _ in parts])[back].contiguous() for t in spec.tensors}
    extras = {k: torch.cat([e[k] for _, e in parts])[back] for k in parts[0][1]}
    return params, extras


def _fit_task(data: dict, task: str, nets: list[PlannedNet], spec: ParamSpec, fit, chunk: int, device) -> ShardResult:
    """One shard's task, ``chunk`` nets at a time: ``data`` (the images, or the digits) from the
    object store."""
    inputs = data["images"][[n.image_index for n in nets]] if task == "inr" else data["digits"]
    params, cols = fit_kan_shard(task, [n.seed for n in nets], inputs, spec, fit, chunk, device)
    cols["net_id"] = torch.tensor([n.net_id for n in nets], dtype=torch.long)
    return params, cols


def kan_node() -> str:
    """A node's preparation: build (or load) the fused KAN kernel once before its shards, so
    :func:`~pipeline.provenance.worker_environment` reports the backend its tasks will use."""
    return kan_backend()


def _plan_nets(kan: Any, task: str, seed: int) -> tuple[list[PlannedNet], dict]:
    """The nets of one KAN task (their seeds from ``seed + 1`` for INRs, ``seed + 2`` for
    classifiers) and the data they are fitted to."""
    if task == "inr":
        c = kan.inr
        images, labels = load_images("mnist_offline")
        splits = split_indices(len(images), {"train": c.n_train, "val": c.n_val, "test": c.n_test}, seed)
        return plan_inr_zoo(labels, splits, 1, seed + 1), {"images": images}
    c = kan.classifier
    nets = []
    for split, n in (("train", c.n_train), ("val", c.n_val), ("test", c.n_test)):
        for _ in range(n):
            net_id = len(nets)
            nets.append(PlannedNet(net_id, -1, -1, split, net_seed(seed + 2, net_id)))
    return nets, {"digits": digits_task(seed, c.digits_test)}


def zoo_plan(kan: Any, task: str, seed: int, device: str, environment: dict) -> ZooPlan:
    """The KAN zoo of ``task`` (``inr`` or ``classifier``) that ``params.yaml``'s ``kan`` section
    defines: its nets in shards of ``kan.shard_size``, their fingerprints and data."""
    if task not in KAN_TASKS:
        raise ValueError(f"unknown KAN task {task!r}; choose from {KAN_TASKS}")
    cfg = kan.inr if task == "inr" else kan.classifier
    nets, data = _plan_nets(kan, task, seed)
    if task == "inr":
        spec = kan_spec([2, *cfg.hidden, 1], cfg.grid, cfg.order)
        fit = InrFit(cfg.steps, cfg.lr)
    else:
        spec = kan_spec([16, *cfg.hidden, 10], cfg.grid, cfg.order)
        fit = ClassifierRanges(
            tuple(cfg.lr), tuple(cfg.weight_decay), tuple(cfg.steps), tuple(cfg.label_noise), tuple(cfg.train_fraction)
        )
    shards = shard_plan(nets, kan.shard_size)
    recipe = {
        "task": task,
        "spec": spec.to_dict(),
        "fit": dataclasses.asdict(fit),
        "chunk_size": kan.chunk_size,
        "threads_per_task": kan.threads_per_task,
        # fused C++ kernel or PyTorch ops (on CPU or a GPU): equal up to float32 rounding, not bytes
        "backend": kan_backend() if device == "cpu" else f"torch-{device}",
        "environment": environment,  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(data),  # the images or digits' bytes: a new data release or normalisation refits
    }
    return ZooPlan(
        stage=f"kan_zoo@{task}",
        task=_fit_task,
        shared=data,
        shards=[(task, s, spec, fit, kan.chunk_size) for s in shards],
        specs=[spec] * len(shards),
        fingerprints=[shard_fingerprint(recipe, s) for s in shards],
        recipe=recipe,
        device=device,
        threads=kan.threads_per_task,
        tags={"kan_task": task},
        desc=f"{task} KAN shards",
        prepare=kan_node if device == "cpu" else None,
        context={"task": task, "nets": shards},
    )


def record(plan: ZooPlan, out: Path) -> tuple[dict, dict]:
    """``out/manifest.csv`` (every net's plan entry and fit columns) and the summary and
    ``zoo.json`` of a fitted KAN zoo."""
    task, spec = plan.context["task"], plan.specs[0]
    rows = []
    for k, s in enumerate(plan.context["nets"]):
        # the hashes stored with the shard when it was written, after checking its data against them
        _, extras, hashes = read_planned_shard(out / "shards" / shard_name(k), spec, [n.net_id for n in s])
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
    return summary, {"task": task, "spec": spec.to_dict(), "recipe": plan.recipe, "summary": summary}


def load_kan_zoo(zoo_dir: str | Path, verify: bool = True) -> tuple[ParamSpec, Params, list[dict[str, str]], dict]:
    """``(spec, params, manifest rows, zoo.json)`` of a KAN zoo (:func:`~pipeline.zoo.store.load_spec_zoo`)."""
    return load_spec_zoo(zoo_dir, verify)


def _stage_plan(kan: Any, *, variant: str, seed: int, out: Path, device: str, environment: dict) -> ZooPlan:
    """The plan of this family's stage (:class:`~pipeline.zoo.family.ZooFamily`)."""
    return zoo_plan(kan, variant, seed, device, environment)


FAMILY = ZooFamily(sections=("kan",), plan=_stage_plan, record=record, out="data/kan/{variant}/zoo", variants=KAN_TASKS)
