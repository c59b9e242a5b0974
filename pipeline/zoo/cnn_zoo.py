"""CNN classifier zoos for accuracy prediction: what each net is trained on, with which
hyper-parameters, and which architectures a zoo holds.

Every *run* trains one CNN on the offline MNIST digits (average-pooled to 14x14) with its own
learning rate, weight decay, initialization scale, dropout, label noise, fraction of the training
digits and number of steps, all drawn from the run's seed, so that test accuracies spread; it
keeps ``checkpoints`` snapshots evenly spaced over its steps, each scored on held-out digits that
no run trains on. Runs of one architecture train together (:func:`train_cnns`: one grouped
convolution per layer, Adam on one flat ``(B, D)`` buffer with per-net learning rates).

Two families of architectures (:func:`zoo_architectures`):

* ``homogeneous``: the Small CNN Zoo's (3 convs of 16 channels, 3x3, stride 2, ReLU, global
  average pooling, a linear layer to 10 classes), one architecture for every run;
* ``heterogeneous`` (CNN Wild Park style): 2-5 convs, channels from {4, 8, 16, 32}, kernels
  {3, 5, 7}, one activation per net from :data:`~pipeline.zoo.cnn.ACTIVATIONS`, and with
  probability 1/2 an identity residual connection between two convs of equal width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.device import from_host
from pipeline.io import fingerprint, tensors_hash
from pipeline.optim import AdamSettings, adam_update
from pipeline.weightspace.spec import Params, flatten, unflatten
from pipeline.zoo.cnn import ACTIVATIONS, CNNArch, cnn_forward, cnn_spec, init_cnns, small_cnn_zoo_arch
from pipeline.zoo.family import ShardResult, ZooFamily, ZooPlan
from pipeline.zoo.store import read_planned_shard, shard_name, write_rows

CNN_FAMILIES = ("homogeneous", "heterogeneous")
CNN_MAX_CONV = 5  # the deepest heterogeneous architecture (convs; plus the linear head)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class CNNRanges:
    """Ranges of the per-run hyper-parameters (log-uniform for lr, decay and init scale)."""

    lr: tuple[float, float]
    weight_decay: tuple[float, float]
    init_scale: tuple[float, float]
    dropout: tuple[float, float]
    label_noise: tuple[float, float]
    train_fraction: tuple[float, float]
    steps: tuple[int, ...]
    batch_size: int = 32
    checkpoints: int = 4


CNN_HYPER_FIELDS = ("lr", "weight_decay", "init_scale", "dropout", "label_noise", "train_fraction", "steps")


def _log_uniform(lo: float, hi: float, u: float) -> float:
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def draw_cnn_hyper(seed: int, ranges: CNNRanges) -> dict[str, float]:
    """One run's hyper-parameters, from its own seed only."""
    u = torch.rand(len(CNN_HYPER_FIELDS), generator=torch.Generator().manual_seed(int(seed) + 1), dtype=torch.float64)
    u = u.tolist()
    lin = lambda r, v: r[0] + v * (r[1] - r[0])  # noqa: E731
    return {
        "lr": _log_uniform(*ranges.lr, u[0]),
        "weight_decay": _log_uniform(*ranges.weight_decay, u[1]),
        "init_scale": _log_uniform(*ranges.init_scale, u[2]),
        "dropout": lin(ranges.dropout, u[3]),
        "label_noise": lin(ranges.label_noise, u[4]),
        "train_fraction": lin(ranges.train_fraction, u[5]),
        "steps": int(ranges.steps[min(int(u[6] * len(ranges.steps)), len(ranges.steps) - 1)]),
    }


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` snapshot steps evenly spaced over a run of ``steps`` steps, the last at ``steps``."""
    return [max(1, round(steps * (j + 1) / n)) for j in range(n)]


def mnist_task(seed: int, n_test: int = 1000, pool: int = 2) -> dict[str, Tensor]:
    """The offline MNIST digits, ``pool``-average-pooled (28x28 -> 14x14), standardized with
    MNIST's usual mean and std, split once into training digits and held-out test digits.

    Returns ``x_train (N, 1, h, w)``, ``y_train``, ``x_test``, ``y_test``.
    """
    from pipeline.data import load_images, split_indices

    images, labels = load_images("mnist_offline")
    x = (F.avg_pool2d(images.unsqueeze(1), pool) - MNIST_MEAN) / MNIST_STD
    splits = split_indices(len(images), {"train": len(images) - n_test, "test": n_test}, seed)
    return {
        "x_train": x[splits["train"]].contiguous(),
        "y_train": labels[splits["train"]],
        "x_test": x[splits["test"]].contiguous(),
        "y_test": labels[splits["test"]],
    }


def sample_architecture(seed: int) -> CNNArch:
    """A Wild-Park-style architecture from its seed alone (see the module docstring). Strides
    are 2 for the first two convs and 1 after them; a residual joins two consecutive convs
    (the later one takes the earlier one's width)."""
    g = torch.Generator().manual_seed(int(seed))

    def pick(options, n=1):
        return [options[int(i)] for i in torch.randint(len(options), (n,), generator=g)]

    K = int(torch.randint(2, CNN_MAX_CONV + 1, (1,), generator=g))
    channels = pick((4, 8, 16, 32), K)
    kernels = pick((3, 5, 7), K)
    activation = pick(sorted(ACTIVATIONS))[0]
    residual: tuple[tuple[int, int], ...] = ()
    if bool(torch.rand(1, generator=g) < 0.5):
        dst = int(torch.randint(2, K + 1, (1,), generator=g))
        channels[dst - 1] = channels[dst - 2]
        residual = ((dst - 1, dst),)
    strides = [2 if l < 2 else 1 for l in range(K)]
    return CNNArch(tuple(channels), tuple(kernels), tuple(strides), activation, residual)


def zoo_architectures(family: str, n_architectures: int, seed: int) -> list[CNNArch]:
    """The architectures of a zoo: the Small CNN Zoo's once (``homogeneous``), or
    ``n_architectures`` distinct draws of :func:`sample_architecture` (``heterogeneous``)."""
    if family == "homogeneous":
        return [small_cnn_zoo_arch()]
    if family != "heterogeneous":
        raise ValueError(f"unknown CNN zoo family {family!r}; choose from {CNN_FAMILIES}")
    archs: list[CNNArch] = []
    k = 0
    while len(archs) < n_architectures:
        arch = sample_architecture(seed * 1_000_003 + k)
        k += 1
        if arch not in archs:
            archs.append(arch)
        if k > 100 * n_architectures:
            raise ValueError(f"could not draw {n_architectures} distinct architectures")
    return archs


def run_data(hyper: dict, seed: int, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """A run's training digits ``(n_b,)`` (its fraction of the digits) and its labels for every
    digit ``(N,)`` (a fraction ``label_noise`` replaced at random), from its seed."""
    g = torch.Generator().manual_seed(int(seed) + 2)
    n = y.numel()
    subset = torch.randperm(n, generator=g)[: max(int(round(hyper["train_fraction"] * n)), n_classes)]
    noisy = torch.rand(n, generator=g) < hyper["label_noise"]
    return subset.sort().values, torch.where(noisy, torch.randint(0, n_classes, (n,), generator=g), y)


@torch.no_grad()
def accuracy(params: Params, arch: CNNArch, x: Tensor, y: Tensor, chunk: int = 500) -> Tensor:
    """Accuracy ``(B,)`` of every net on ``(x, y)`` (shared images), in chunks of images."""
    correct = sum(
        (cnn_forward(params, arch, x[i : i + chunk]).argmax(-1) == y[i : i + chunk]).sum(1)
        for i in range(0, len(y), chunk)
    )
    return correct.float() / len(y)


DRAW_BLOCK = 50  # steps whose batches and dropout masks are drawn (on the CPU) and moved at once


def _draws(
    runs: list, hypers: list[dict], gens: list[torch.Generator], k: int, bs: int, channels: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The next ``k`` steps' training indices ``(k, B, bs)`` and dropout masks ``(k, B, bs, C)``
    of every run, each from its own generator in the order one step at a time draws them, moved
    to ``device`` in one transfer each (no step copies from the host)."""
    idx, mask = [], []
    for r, h, g in zip(runs, hypers, gens, strict=True):
        steps = [
            (r[0][torch.randint(len(r[0]), (bs,), generator=g)],
             (torch.rand(bs, channels, generator=g) >= h["dropout"]).float() / (1 - h["dropout"]))
            for _ in range(k)
        ]  # fmt: skip
        idx.append(torch.stack([i for i, _ in steps]))
        mask.append(torch.stack([m for _, m in steps]))
    return from_host(torch.stack(idx, dim=1), device), from_host(torch.stack(mask, dim=1), device)


def cnn_step(
    flat: Tensor,
    m: Tensor,
    v: Tensor,
    step: int,
    arch: CNNArch,
    spec,
    x_train: Tensor,
    labels: Tensor,
    idx: Tensor,
    mask: Tensor,
    lr: Tensor,
    wd: Tensor,
    steps: Tensor,
    settings: AdamSettings,
) -> None:
    """One step of :func:`train_cnns` in place: every run's cross-entropy on its batch ``idx``
    ``(B, bs)`` with dropout ``mask`` ``(B, bs, C)``, and its Adam update (learning rate 0 after
    its own ``steps``). Nothing is read back to the host."""
    B, bs = idx.shape
    logits = cnn_forward(unflatten(flat, spec), arch, x_train[idx], mask)  # (B, bs, classes)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.gather(1, idx).flatten(), reduction="none")
    (g,) = torch.autograd.grad(loss.view(B, bs).mean(1).sum(), [flat])
    with torch.no_grad():
        adam_update(flat, g, m, v, step, torch.where(steps >= step, lr, 0.0), settings, wd)


def train_cnns(
    arch: CNNArch, seeds: list[int], data: dict[str, Tensor], ranges: CNNRanges, device: torch.device | str = "cpu"
) -> tuple[list[Params], dict[str, Tensor]]:
    """Train one CNN per seed, all of architecture ``arch``, each with its own hyper-parameters
    (:func:`draw_cnn_hyper`), at once; keep ``ranges.checkpoints`` snapshots per run.

    Every step, run ``b`` draws ``ranges.batch_size`` of its training digits and its dropout
    mask from its own generator, and takes an Adam step (L2 weight decay) with its own learning
    rate; after its last step its learning rate is 0. Draws never depend on the other runs of
    the batch, and on the CPU neither do a run's bytes. Initial values, hyper-parameters,
    subsets and labels are drawn on the CPU.

    Returns:
        ``(snapshots, extras)``: ``snapshots[j]`` the zoo batch of every run's ``j``-th
        checkpoint (CPU); extras ``test_acc`` (on the held-out digits) and ``step``, each
        ``(checkpoints, B)``, and every field of :data:`CNN_HYPER_FIELDS` ``(B,)``.
    """
    if len(seeds) == 1:
        # CPU kernels reduce a lone group in another order than >= 2 groups: a ghost copy keeps a
        # run's bytes independent of its partners (checked by the tests)
        snapshots, extras = train_cnns(arch, seeds * 2, data, ranges, device)
        return [{k: t[:1] for k, t in s.items()} for s in snapshots], {k: t[..., :1] for k, t in extras.items()}
    device = torch.device(device)
    spec = cnn_spec(arch)
    B, n_ckpt, bs = len(seeds), ranges.checkpoints, ranges.batch_size
    hypers = [draw_cnn_hyper(s, ranges) for s in seeds]
    runs = [run_data(h, s, data["y_train"], arch.n_classes) for h, s in zip(hypers, seeds, strict=True)]
    labels = torch.stack([r[1] for r in runs]).to(device)  # (B, N)
    gens = [torch.Generator().manual_seed(int(s) + 3) for s in seeds]
    col = {k: torch.tensor([float(h[k]) for h in hypers], dtype=torch.float32) for k in CNN_HYPER_FIELDS}
    lr, wd = col["lr"].to(device), col["weight_decay"].to(device).view(B, 1)
    steps = col["steps"].long().to(device)
    x_train = data["x_train"].to(device)
    flat = flatten(init_cnns(arch, seeds, [h["init_scale"] for h in hypers]), spec).to(device).requires_grad_(True)
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    ckpt = torch.tensor([checkpoint_steps(int(h["steps"]), n_ckpt) for h in hypers]).t()  # (n_ckpt, B)
    slots: dict[int, list[tuple[int, int]]] = {}  # step -> the (checkpoint, run) snapshots it takes
    for j, row in enumerate(ckpt.tolist()):
        for b, t in enumerate(row):
            slots.setdefault(t, []).append((j, b))
    saves = {t: torch.tensor(jb, device=device).t() for t, jb in slots.items()}  # as device indices
    snaps = flat.new_zeros(n_ckpt, B, flat.shape[1], requires_grad=False)
    settings = AdamSettings(int(steps.max()))
    for first in range(1, settings.steps + 1, DRAW_BLOCK):
        block = range(first, min(first + DRAW_BLOCK, settings.steps + 1))
        idx, mask = _draws(runs, hypers, gens, len(block), bs, arch.channels[-1], device)
        for i, step in enumerate(block):
            cnn_step(flat, m, v, step, arch, spec, x_train, labels, idx[i], mask[i], lr, wd, steps, settings)
            if step in saves:
                j, b = saves[step]
                snaps[j, b] = flat.detach()[b]
    snaps = snaps.cpu()
    snapshots = [{k: t.clone() for k, t in unflatten(s, spec).items()} for s in snaps]
    x_test, y_test = data["x_test"].to(device), data["y_test"].to(device)
    test_acc = torch.stack(
        [accuracy({k: t.to(device) for k, t in s.items()}, arch, x_test, y_test).cpu() for s in snapshots]
    )
    return snapshots, {"test_acc": test_acc, "step": ckpt, **col}


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a CNN zoo: its id, architecture, split (every checkpoint of a run is
    in that split) and seed."""

    run_id: int
    arch_index: int
    split: str
    seed: int


def plan_cnn_zoo(
    n_architectures: int, runs_per_architecture: int, n_val: int, n_test: int, seed: int
) -> list[PlannedRun]:
    """Every run of a zoo, architecture by architecture: of each architecture's runs, ``n_val``
    drawn at random go to validation, ``n_test`` to test, the rest to training (splits by run,
    every architecture in every split). Seeds and splits depend on ``seed`` and the run alone."""
    if n_val + n_test >= runs_per_architecture:
        raise ValueError(
            f"{runs_per_architecture} runs per architecture leave none for training after {n_val} + {n_test}"
        )
    plan = []
    for a in range(n_architectures):
        order = torch.randperm(
            runs_per_architecture, generator=torch.Generator().manual_seed(seed * 7_919 + a)
        ).tolist()
        split = {r: "val" for r in order[:n_val]} | {r: "test" for r in order[n_val : n_val + n_test]}
        for r in range(runs_per_architecture):
            run_id = a * runs_per_architecture + r
            plan.append(
                PlannedRun(run_id, a, split.get(r, "train"), (seed * 1_000_003 + run_id * 7_919 + 12_345) % (2**31 - 1))
            )
    return plan


def fit_cnn_shard(
    arch: CNNArch,
    runs: list[PlannedRun],
    data: dict[str, Tensor],
    ranges: CNNRanges,
    chunk: int,
    device: torch.device | str = "cpu",
) -> tuple[Params, dict[str, Tensor]]:
    """Train the runs of one shard (one architecture), ``chunk`` at a time, grouped by their drawn
    step counts (a chunk of short runs does not wait for a long one; the order depends on the
    seeds only). Every checkpoint becomes a net of the shard, run-major: net id
    ``run_id * checkpoints + j``.

    Returns ``(params, extras)`` on the CPU: extras ``net_id``, ``run_id``, ``checkpoint``,
    ``step``, ``test_acc`` and every field of :data:`CNN_HYPER_FIELDS`, each ``(n_runs * checkpoints,)``.
    """
    order = sorted(range(len(runs)), key=lambda i: draw_cnn_hyper(runs[i].seed, ranges)["steps"])
    n_ckpt = ranges.checkpoints
    parts = []
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        snapshots, extras = train_cnns(arch, [runs[i].seed for i in idx], data, ranges, device)
        parts.append((idx, snapshots, extras))
    spec = cnn_spec(arch)
    by_run: dict[int, tuple[list[Tensor], dict[str, Tensor]]] = {}
    for idx, snapshots, extras in parts:
        for b, i in enumerate(idx):
            flat = torch.stack([flatten({k: v[b : b + 1] for k, v in s.items()}, spec)[0] for s in snapshots])
            by_run[i] = (flat, {k: (v[:, b] if v.dim() == 2 else v[b].expand(n_ckpt)) for k, v in extras.items()})
    flat = torch.cat([by_run[i][0] for i in range(len(runs))])
    cols = {k: torch.cat([by_run[i][1][k] for i in range(len(runs))]) for k in parts[0][2]}
    cols["run_id"] = torch.tensor([r.run_id for r in runs for _ in range(n_ckpt)], dtype=torch.long)
    cols["checkpoint"] = torch.arange(n_ckpt).repeat(len(runs))
    cols["net_id"] = cols["run_id"] * n_ckpt + cols["checkpoint"]
    return {k: v.clone() for k, v in unflatten(flat, spec).items()}, cols


FAMILY_SEED = {"homogeneous": 5, "heterogeneous": 6}  # each family's zoo seed: params.seed * 10 + this


def ranges(c: Any) -> CNNRanges:
    """The per-run hyper-parameter ranges of the ``cnn`` section of ``params.yaml``."""
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


def plan_shards(cnn: Any, family: str, seed: int) -> tuple[list[CNNArch], list[tuple[int, list[PlannedRun]]]]:
    """The family's architectures and its shards: ``(architecture index, runs)``, at most
    ``cnn.shard_size`` runs of one architecture each."""
    fc = getattr(cnn, family)
    zoo_seed = seed * 10 + FAMILY_SEED[family]
    archs = zoo_architectures(family, fc.n_architectures, zoo_seed)
    runs = plan_cnn_zoo(len(archs), fc.runs_per_architecture, fc.n_val, fc.n_test, zoo_seed)
    shards = []
    for a in range(len(archs)):
        mine = [r for r in runs if r.arch_index == a]
        shards += [(a, mine[i : i + cnn.shard_size]) for i in range(0, len(mine), cnn.shard_size)]
    return archs, shards


def _fit_task(data: dict, arch: CNNArch, runs: list[PlannedRun], r: CNNRanges, chunk: int, device) -> ShardResult:
    """One shard's task: the digits from the object store."""
    return fit_cnn_shard(arch, runs, data, r, chunk, device)


def zoo_plan(cnn: Any, family: str, seed: int, device: str, environment: dict) -> ZooPlan:
    """The CNN zoo of ``family`` that ``params.yaml``'s ``cnn`` section defines: one architecture
    per shard, the runs' seeds from ``seed * 10 +`` :data:`FAMILY_SEED`."""
    if family not in CNN_FAMILIES:
        raise ValueError(f"unknown CNN family {family!r}; choose from {CNN_FAMILIES}")
    archs, shards = plan_shards(cnn, family, seed)
    data = mnist_task(seed, cnn.digits_test)
    r = ranges(cnn)
    recipe = {
        "family": family,
        "ranges": dataclasses.asdict(r),
        "chunk_size": cnn.chunk_size,
        "threads_per_task": cnn.threads_per_task,
        "digits_test": cnn.digits_test,
        "environment": environment,  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(data),  # the digits' bytes: a new data release or normalisation refits
        "device": device,
    }
    return ZooPlan(
        stage=f"cnn_zoo@{family}",
        task=_fit_task,
        shared=data,
        shards=[(archs[a], runs, r, cnn.chunk_size) for a, runs in shards],
        specs=[cnn_spec(archs[a]) for a, _ in shards],
        fingerprints=[fingerprint_shard(recipe, archs[a], runs) for a, runs in shards],
        recipe=recipe,
        device=device,
        threads=cnn.threads_per_task,
        tags={"cnn_family": family},
        desc=f"{family} CNN shards",
        context={"family": family, "architectures": archs, "shards": shards, "checkpoints": r.checkpoints},
    )


def fingerprint_shard(recipe: dict, arch: CNNArch, runs: list[PlannedRun]) -> str:
    """Identifies the work a shard stands for: the recipe, its architecture and its runs."""
    return fingerprint({"recipe": recipe, "arch": arch.to_dict(), "runs": [dataclasses.asdict(x) for x in runs]})


def record(plan: ZooPlan, out: Path) -> tuple[dict, dict]:
    """``out/manifest.csv`` (one row per checkpoint: its run, architecture, step, test accuracy
    and hyper-parameters) and the summary and ``zoo.json`` of a fitted CNN zoo."""
    shards, archs, n_ckpt = plan.context["shards"], plan.context["architectures"], plan.context["checkpoints"]
    split_of = {run.run_id: run.split for _, runs in shards for run in runs}
    rows = []
    for k, (a, runs) in enumerate(shards):
        ids = [run.run_id * n_ckpt + j for run in runs for j in range(n_ckpt)]
        _, extras, hashes = read_planned_shard(out / "shards" / shard_name(k), plan.specs[k], ids)
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
        "family": plan.context["family"],
        "architectures": [arch.to_dict() for arch in archs],
        "recipe": plan.recipe,
        "summary": summary,
    }
    return summary, info


def load_cnn_zoo(
    zoo_dir: str | Path, verify: bool = True
) -> tuple[list[CNNArch], list[Params], list[list[dict[str, str]]], dict]:
    """``(architectures, params per architecture, manifest rows per architecture, zoo.json)``
    of a CNN zoo written by the ``cnn_zoo`` stage, nets in manifest order within each architecture.

    Every net is checked against the hash stored with its shard and against the manifest;
    :class:`~pipeline.io.CorruptFileError` names a bad shard and net, a net listed twice, or a
    manifest net that no shard holds.
    """
    from pipeline.io import CorruptFileError, read_json
    from pipeline.zoo.store import check_unique_ids, read_rows, read_shard, read_verified_shard

    zoo_dir = Path(zoo_dir)
    info = read_json(zoo_dir / "zoo.json")
    archs = [CNNArch.from_dict(a) for a in info["architectures"]]
    manifest = zoo_dir / "manifest.csv"
    rows = read_rows(manifest)
    try:
        ids = [int(r["net_id"]) for r in rows]
        shard_of = {int(r["net_id"]): (r["shard"], int(r["arch_index"])) for r in rows}
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{manifest}: malformed manifest row ({e})") from e
    check_unique_ids(manifest, ids)
    by_id = dict(zip(ids, rows, strict=True))
    params: list[list[Params]] = [[] for _ in archs]
    out_rows: list[list[dict[str, str]]] = [[] for _ in archs]
    for shard in sorted({s for s, _ in shard_of.values()}):
        path = zoo_dir / "shards" / shard
        a = {shard_of[i][1] for i in ids if shard_of[i][0] == shard}
        if len(a) != 1 or not 0 <= min(a) < len(archs):
            raise CorruptFileError(f"{manifest}: shard {shard} is listed with architectures {sorted(a)}")
        arch_index = a.pop()
        spec = cnn_spec(archs[arch_index])
        if verify:
            p, extras, stored = read_verified_shard(path, spec)
        else:
            p, extras = read_shard(path, spec)
            stored = [by_id[i]["sha256"] for i in extras["net_id"].tolist()]
        shard_ids = extras["net_id"].tolist()
        for net_id, h in zip(shard_ids, stored, strict=True):
            if net_id not in by_id or by_id[net_id]["sha256"] != h:
                raise CorruptFileError(f"{path}: net {net_id} does not match its manifest entry")
        params[arch_index].append(p)
        out_rows[arch_index].extend(by_id[i] for i in shard_ids)
    found = sum(len(r) for r in out_rows)
    if found != len(rows):
        raise CorruptFileError(f"{zoo_dir / 'shards'}: the shards hold {found} of the manifest's {len(rows)} nets")
    merged = [{k: torch.cat([p[k] for p in ps]) for k in ps[0]} if ps else {} for ps in params]
    return archs, merged, out_rows, info


def _stage_plan(cnn: Any, *, variant: str, seed: int, out: Path, device: str, environment: dict) -> ZooPlan:
    """The plan of this family's stage (:class:`~pipeline.zoo.family.ZooFamily`)."""
    return zoo_plan(cnn, variant, seed, device, environment)


FAMILY = ZooFamily(
    sections=("cnn",), plan=_stage_plan, record=record, out="data/cnn/{variant}/zoo", variants=CNN_FAMILIES
)
