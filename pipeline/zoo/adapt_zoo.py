r"""Binary MLP classifiers of digit pairs and a corrupted target domain: the zoo of domain
adaptation (DWSNets, "adapting a network to a new domain").

Every net is a ReLU MLP on the offline MNIST digits, average-pooled to ``28 / pool`` squared
pixels and standardized:

.. math::
    h_0 = x \in \mathbb R^{D},\qquad h_{l} = \mathrm{relu}(W_l h_{l-1} + b_l)\ (l < L),\qquad
    \hat y = W_L h_{L-1} + b_L \in \mathbb R^2

trained on the *source* domain (the clean digits) of its own digit pair ``(a, b)``, label 0 for
``a`` and 1 for ``b``. The *target* domain is the same digits under one seeded corruption
(:func:`corrupt_digits`: rotation, optional left-right flip, Gaussian blur, contrast and
brightness, pixel noise), computed once from ``(digits, seed)``. Hidden units are a symmetry
(:func:`~pipeline.weightspace.spec.mlp_spec`): permuting them keeps the logits.

A zoo holds, per net, beside its weights: its accuracy on held-out source and target digits of
its pair (the *no adaptation* baseline), the accuracy after fine-tuning on a few labelled target
images (a reference that uses target labels) and the accuracy of its twin, the same seed trained
on the target domain (the upper bound). Some digit pairs are *novel*: only test nets have them,
so an adapter that memorises pairs instead of reading the weights shows up there.

Training is batched over nets (:func:`train_pair_mlps`: one ``bmm`` per layer, Adam on one flat
``(B, D)`` buffer); every draw comes from a net's own seed, so a net's bytes do not depend on
the nets it trains with.
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

from pipeline.config import Corruption
from pipeline.data import load_images
from pipeline.device import from_host
from pipeline.io import (
    CorruptFileError,
    fingerprint,
    load_tensors,
    read_metadata,
    retire,
    save_tensors,
    tensors_hash,
    unretire,
)
from pipeline.optim import AdamSettings, adam_update
from pipeline.weightspace.forward import mlp_forward
from pipeline.weightspace.spec import Params, ParamSpec, flatten, mlp_spec, unflatten
from pipeline.zoo.family import ShardResult, ZooFamily, ZooPlan
from pipeline.zoo.store import read_planned_shard, shard_name, write_rows

PAIRS: tuple[tuple[int, int], ...] = tuple((a, b) for a in range(10) for b in range(a + 1, 10))  # 45 digit pairs
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def pair_spec(in_dim: int, hidden: list[int] | tuple[int, ...]) -> ParamSpec:
    """The weight space of a binary classifier ``in_dim -> hidden... -> 2``."""
    return mlp_spec([in_dim, *hidden, 2])


# --------------------------------------------------------------------------------------------
# The two domains
# --------------------------------------------------------------------------------------------


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, ``(N, H, W)`` -> ``(N, H, W)`` (zero padding, radius ``3 sigma``).

    Written as weighted sums of shifted copies, in a fixed order, with weights from Python's
    ``math``: element-wise arithmetic gives the same bytes in every process, where a convolution
    or vector-math library may pick its kernel by the buffers' memory alignment or its threads."""
    r = max(1, math.ceil(3 * sigma))
    w8 = [math.exp(-(t * t) / (2 * sigma**2)) for t in range(-r, r + 1)]  # libm, not a vector-math library
    total = math.fsum(w8)
    k = [v / total for v in w8]
    h, w = images.shape[-2:]
    x = F.pad(images, (r, r))
    x = sum(k[j] * x[..., j : j + w] for j in range(2 * r + 1))
    x = F.pad(x, (0, 0, r, r))
    return sum(k[j] * x[..., j : j + h, :] for j in range(2 * r + 1))


def _rotation_grid(cos: Tensor, sin: Tensor, h: int, w: int) -> Tensor:
    """The sampling grid of :func:`torch.nn.functional.grid_sample` that rotates each image by its
    angle, ``(N, H, W, 2)`` (pixel centres, ``align_corners=False``), as element-wise products
    (not the batched matrix product of ``affine_grid``, whose library kernel may depend on memory
    alignment: the same bytes in every process)."""
    xs = (2 * torch.arange(w, dtype=cos.dtype) + 1) / w - 1
    ys = (2 * torch.arange(h, dtype=cos.dtype) + 1) / h - 1
    c, s_ = cos[:, None, None], sin[:, None, None]
    gx = c * xs[None, None, :] - s_ * ys[None, :, None]
    gy = s_ * xs[None, None, :] + c * ys[None, :, None]
    return torch.stack([gx, gy], dim=-1)


def corrupt_digits(images: Tensor, c: Corruption, seed: int) -> Tensor:
    """The target domain: every image corrupted by :class:`Corruption`, its random parts (angle
    jitter, noise) drawn from ``seed`` alone. ``(N, 28, 28)`` in ``[0, 1]`` -> same shape."""
    g = torch.Generator().manual_seed(int(seed))
    n = images.shape[0]
    degrees = c.rotation + c.jitter * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
    angles = [math.radians(a) for a in degrees.tolist()]  # libm's cos and sin: the same bytes in every process
    cos = torch.tensor([math.cos(a) for a in angles], dtype=torch.float64).float()
    sin = torch.tensor([math.sin(a) for a in angles], dtype=torch.float64).float()
    grid = _rotation_grid(cos, sin, *images.shape[1:])
    x = F.grid_sample(images.unsqueeze(1).float(), grid, align_corners=False).squeeze(1)
    if c.flip:
        x = x.flip(-1)
    if c.blur > 0:
        x = _gaussian_blur(x, c.blur)
    x = c.contrast * x + c.brightness
    x = x + c.noise * torch.randn(x.shape, generator=g)
    return x.clamp(0.0, 1.0)


def pool_digits(images: Tensor, pool: int) -> Tensor:
    """``(N, 28, 28)`` in ``[0, 1]`` -> ``(N, (28 / pool)^2)``: average-pooled, standardized with
    MNIST's mean and std, flattened (the classifiers' input)."""
    x = F.avg_pool2d(images.unsqueeze(1), pool) if pool > 1 else images.unsqueeze(1)
    return ((x - MNIST_MEAN) / MNIST_STD).flatten(1)


@dataclass(frozen=True)
class PairBanks:
    """Images of every digit pair, as rectangular banks indexed by pair: ``x_*`` ``(45, n, D)``,
    ``y_*`` ``(45, n)`` with label 0 for the pair's first digit, 1 for its second; half of each
    pair's images per digit. ``train``: the training digits; ``test``: held-out digits no net
    trains on. ``source`` clean, ``target`` corrupted (the same digits)."""

    x_source_train: Tensor
    x_target_train: Tensor
    y_train: Tensor
    x_source_test: Tensor
    x_target_test: Tensor
    y_test: Tensor

    def tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _bank(digits: Tensor, per_digit: int, *images: Tensor) -> tuple[list[Tensor], Tensor]:
    """For every pair: the first ``per_digit`` images of each of its digits (in the given order)."""
    first = {d: (digits == d).nonzero().flatten()[:per_digit] for d in range(10)}
    short = [d for d, i in first.items() if len(i) < per_digit]
    if short:
        raise ValueError(f"digits {short} have fewer than {per_digit} images")
    idx = torch.stack([torch.cat([first[a], first[b]]) for a, b in PAIRS])  # (45, 2 * per_digit)
    labels = torch.cat([torch.zeros(per_digit), torch.ones(per_digit)]).long().expand(len(PAIRS), -1).contiguous()
    return [x[idx] for x in images], labels


def pair_banks(
    images: Tensor, digits: Tensor, c: Corruption, seed: int, n_test: int, pool: int, per_digit_train: int
) -> PairBanks:
    """Split the digits once (``n_test`` held out, drawn with ``seed``), corrupt them all with
    ``seed``, and bank them by pair: ``per_digit_train`` training images per digit; as many
    held-out images per digit as the rarest digit has."""
    from pipeline.data import split_indices

    corrupted = corrupt_digits(images, c, seed)
    split = split_indices(len(images), {"train": len(images) - n_test, "test": n_test}, seed)
    src, tgt = pool_digits(images, pool), pool_digits(corrupted, pool)
    (xs_tr, xt_tr), y_tr = _bank(digits[split["train"]], per_digit_train, src[split["train"]], tgt[split["train"]])
    test_digits = digits[split["test"]]
    per_digit_test = int(torch.bincount(test_digits, minlength=10).min())
    (xs_te, xt_te), y_te = _bank(test_digits, per_digit_test, src[split["test"]], tgt[split["test"]])
    return PairBanks(xs_tr, xt_tr, y_tr, xs_te, xt_te, y_te)


# --------------------------------------------------------------------------------------------
# The zoo plan and batched training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedPairNet:
    """One classifier of the zoo: its id, digit pair (index into :data:`PAIRS`), split and seed."""

    net_id: int
    pair: int
    split: str
    seed: int


def novel_pairs(n_novel: int, seed: int) -> list[int]:
    """The pairs (indices into :data:`PAIRS`) that only test nets have, drawn from ``seed``."""
    return sorted(torch.randperm(len(PAIRS), generator=torch.Generator().manual_seed(seed * 31 + 7))[:n_novel].tolist())


def plan_pair_zoo(n_nets: int, n_val: int, n_test: int, n_novel: int, seed: int) -> list[PlannedPairNet]:
    """Every net of the zoo. Nets cycle through the 45 pairs in a seeded order (net ``i`` gets
    entry ``i mod 45`` of one shuffle of the pairs), so every pair has ``n_nets / 45`` nets, give
    or take one; the nets of the novel pairs are test nets, and of the others ``n_val`` go to
    validation and ``n_test`` more to test, drawn at random."""
    if not 0 <= n_novel < len(PAIRS):
        raise ValueError(f"novel pairs must be in 0 .. {len(PAIRS) - 1}, got {n_novel}")
    g = torch.Generator().manual_seed(seed * 1_009 + 3)
    order = torch.randperm(len(PAIRS), generator=g).tolist()
    pairs = [order[i % len(PAIRS)] for i in range(n_nets)]
    novel = set(novel_pairs(n_novel, seed))
    known = [i for i in range(n_nets) if pairs[i] not in novel]
    if n_val + n_test >= len(known):
        raise ValueError(f"{len(known)} nets of known pairs leave none for training after {n_val} + {n_test}")
    shuffled = [known[int(j)] for j in torch.randperm(len(known), generator=g)]
    split = {i: "test" for i in range(n_nets) if pairs[i] in novel}
    split |= {i: "val" for i in shuffled[:n_val]} | {i: "test" for i in shuffled[n_val : n_val + n_test]}
    return [
        PlannedPairNet(i, pairs[i], split.get(i, "train"), (seed * 1_000_003 + i * 7_919 + 4_321) % (2**31 - 1))
        for i in range(n_nets)
    ]


@dataclass(frozen=True)
class PairFit:
    """How every classifier trains: Adam, ``steps`` steps of ``batch_size`` images of its pair,
    He-uniform initialization; ``finetune_*``: the labelled-target reference (``finetune_images``
    corrupted training images of the pair per net, half of each digit, full batch,
    ``finetune_steps`` Adam steps)."""

    hidden: tuple[int, ...] = (32, 32)
    pool: int = 4
    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 32
    finetune_images: int = 16
    finetune_steps: int = 50
    finetune_lr: float = 1e-3


def init_pair_mlps(spec: ParamSpec, seeds: list[int]) -> Params:
    """He-uniform weights (``U(±sqrt(6 / fan_in))``), zero biases; net ``b`` from ``seeds[b]``."""
    out: Params = {t.name: torch.zeros(len(seeds), *t.shape) for t in spec.tensors}
    for b, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        for t in spec.tensors:
            if t.name.endswith("weight"):
                bound = math.sqrt(6.0 / t.shape[1])
                out[t.name][b] = (2 * torch.rand(t.shape, generator=g) - 1) * bound
    return out


def train_pair_mlps(
    spec: ParamSpec,
    init: Params,
    seeds: list[int],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Params:
    """Train ``B`` classifiers at once from ``init``: net ``b`` draws ``batch_size`` of its own
    images ``x[b]`` ``(B, n, D)`` (labels ``y[b]`` ``(B, n)``) per step from its seed, Adam.
    ``batch_size >= n``: full batch. Returns the trained nets (CPU)."""
    if len(seeds) == 1:  # a ghost partner: a lone batch may reduce in another order on CPU kernels
        out = train_pair_mlps(spec, {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in init.items()}, seeds * 2,
                              x.repeat(2, 1, 1), y.repeat(2, 1), steps, lr, batch_size, device)  # fmt: skip
        return {k: v[:1] for k, v in out.items()}
    device = torch.device(device)
    B, n = y.shape
    gens = [torch.Generator().manual_seed(int(s) + 11) for s in seeds]
    flat = flatten(init, spec).to(device).requires_grad_(True)
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    settings = AdamSettings(steps)
    lrs = torch.full((B,), float(lr), device=device)
    x, y = x.to(device), y.to(device)
    for first in range(1, steps + 1, DRAW_BLOCK):
        block = range(first, min(first + DRAW_BLOCK, steps + 1))
        if batch_size < n:  # the block's batches, per net in step order, in one transfer
            draws = from_host(
                torch.stack([torch.randint(n, (len(block), batch_size), generator=g) for g in gens], 1), device
            )
        for i, step in enumerate(block):
            idx = None if batch_size >= n else draws[i]
            pair_step(flat, m, v, step, spec, x, y, idx, lrs, settings)
    return {k: t.detach().cpu().clone() for k, t in unflatten(flat.detach(), spec).items()}


DRAW_BLOCK = 50  # steps whose batch indices are drawn (on the CPU) and moved at once


def pair_step(
    flat: Tensor,
    m: Tensor,
    v: Tensor,
    step: int,
    spec: ParamSpec,
    x: Tensor,
    y: Tensor,
    idx: Tensor | None,
    lrs: Tensor,
    settings: AdamSettings,
) -> None:
    """One step of :func:`train_pair_mlps` in place: every net's cross-entropy on its batch
    ``idx`` ``(B, b)`` of its own images (``None``: all of them), then Adam. No read-back."""
    B = y.shape[0]
    if idx is None:
        xb, yb = x, y
    else:
        xb, yb = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])), y.gather(1, idx)
    logits = mlp_forward(unflatten(flat, spec), spec, xb)
    loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(B, -1).mean(1).sum()
    (g,) = torch.autograd.grad(loss, [flat])
    with torch.no_grad():
        adam_update(flat, g, m, v, step, lrs, settings)


def few_shot_indices(seeds: list[int], per_digit: int, k: int) -> Tensor:
    """``(B, 2k)`` indices into a pair's bank (first ``per_digit`` images: its first digit, the
    next ``per_digit``: its second): ``k`` images of each digit per net, drawn from its seed."""
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s) + 13)
        rows.append(
            torch.cat(
                [torch.randperm(per_digit, generator=g)[:k], per_digit + torch.randperm(per_digit, generator=g)[:k]]
            )
        )
    return torch.stack(rows)


@torch.no_grad()
def pair_accuracy(params: Params, spec: ParamSpec, x: Tensor, y: Tensor) -> Tensor:
    """Accuracy ``(B,)`` of net ``b`` on its own images ``x[b]`` ``(B, n, D)``, labels ``y[b]``."""
    return (mlp_forward(params, spec, x).argmax(-1) == y).float().mean(1)


def fit_pair_shard(
    nets: list[PlannedPairNet], banks: dict[str, Tensor], fit: PairFit, device: torch.device | str = "cpu"
) -> tuple[Params, dict[str, Tensor]]:
    """Train the nets of one shard on their pairs' source digits and score the baselines.

    Returns ``(params, extras)`` on the CPU; extras ``(B,)``: ``net_id``, ``pair``, and the
    held-out accuracies ``source_acc`` / ``target_acc`` (no adaptation), ``finetune_acc`` (after
    fine-tuning on ``fit.finetune_images`` labelled target images), ``oracle_acc`` (the twin
    trained on the target domain).
    """
    spec = pair_spec(banks["x_source_train"].shape[-1], fit.hidden)
    seeds = [n.seed for n in nets]
    pair = torch.tensor([n.pair for n in nets])
    init = init_pair_mlps(spec, seeds)
    y_tr, y_te = banks["y_train"][pair], banks["y_test"][pair]

    def train(x: Tensor) -> Params:
        return train_pair_mlps(spec, init, seeds, x[pair], y_tr, fit.steps, fit.lr, fit.batch_size, device)

    params, oracle = train(banks["x_source_train"]), train(banks["x_target_train"])
    few = few_shot_indices(seeds, y_tr.shape[1] // 2, fit.finetune_images // 2)
    x_few = banks["x_target_train"][pair].gather(1, few.unsqueeze(-1).expand(-1, -1, spec.layer_sizes[0]))
    tuned = train_pair_mlps(spec, params, seeds, x_few, y_tr.gather(1, few), fit.finetune_steps, fit.finetune_lr,
                            x_few.shape[1], device)  # fmt: skip
    x_src, x_tgt = banks["x_source_test"][pair], banks["x_target_test"][pair]
    extras = {
        "net_id": torch.tensor([n.net_id for n in nets]),
        "pair": pair,
        "source_acc": pair_accuracy(params, spec, x_src, y_te),
        "target_acc": pair_accuracy(params, spec, x_tgt, y_te),
        "finetune_acc": pair_accuracy(tuned, spec, x_tgt, y_te),
        "oracle_acc": pair_accuracy(oracle, spec, x_tgt, y_te),
    }
    return params, extras


ZOO_SEED = 7  # the zoo's seed: params.seed * 10 + this
BASELINES = ("source_acc", "target_acc", "finetune_acc", "oracle_acc")


def pair_fit(z: Any) -> PairFit:
    """The fitting settings of ``params.yaml``'s ``adapt.zoo`` section."""
    return PairFit(
        tuple(z.hidden), z.pool, z.steps, z.lr, z.batch_size, z.finetune_images, z.finetune_steps, z.finetune_lr
    )


def _fit_task(banks: dict, nets: list[PlannedPairNet], fit: PairFit, device) -> ShardResult:
    """One shard's task: the digit banks from the object store."""
    return fit_pair_shard(nets, banks, fit, device)


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


BANKS_FILE = "banks.safetensors"  # a zoo folder's digit banks, beside its shards


def digit_banks(adapt: Any, seed: int, environment: dict, folder: Path) -> dict[str, Tensor]:
    """The digit banks (:func:`pair_banks`) of the zoo in ``folder``, as its shards read them.

    Built once from the offline MNIST digits and stored as ``folder/banks.safetensors``, keyed by
    what makes them (the digits' bytes, the corruption, the split, the code and environment):
    a zoo resumed later, or the stages that read it (:func:`read_banks`), see the bytes its first
    shards were fitted on, whatever floating-point kernel a later process would pick. A file of
    another key is retired to ``folder/retired/<key>/`` (brought back when that key returns),
    never deleted."""
    z = adapt.zoo
    images, digits = load_images("mnist_offline")
    zoo_seed = seed * 10 + ZOO_SEED
    make = {
        "digits": tensors_hash({"images": images, "digits": digits}),
        "seed": zoo_seed,
        "corruption": dataclasses.asdict(adapt.corruption),
        "split": [z.digits_test, z.pool, z.images_per_digit],
        "environment": environment,
    }
    key, path = fingerprint(make), folder / BANKS_FILE
    if path.exists():
        stored = read_metadata(path).get("key", "unkeyed")
        if stored == key:
            return read_banks(path)
        retire([path], folder, stored)
    if unretire(folder, key, [BANKS_FILE]):
        return read_banks(path)
    banks = pair_banks(images, digits, adapt.corruption, zoo_seed, z.digits_test, z.pool, z.images_per_digit).tensors()
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(path, banks, {"key": key, "sha256": tensors_hash(banks)})
    return banks


def read_banks(path: Path, expect: str | None = None) -> dict[str, Tensor]:
    """The digit banks stored at ``path`` by :func:`digit_banks`, checked against the hash in the
    file and ``expect`` (a zoo recipe's ``inputs``): a damaged file, or the banks of another zoo,
    raises :class:`~pipeline.io.CorruptFileError` naming the file."""
    banks = load_tensors(path)
    got, stored = tensors_hash(banks), read_metadata(path).get("sha256")
    if got != stored or (expect is not None and got != expect):
        which = "its own hash" if got != stored else "the zoo's recipe (inputs)"
        raise CorruptFileError(f"{path}: the digit banks do not match {which}; delete it to rebuild the zoo")
    return banks


def zoo_plan(adapt: Any, seed: int, device: str, environment: dict, banks: dict[str, Tensor]) -> ZooPlan:
    """The domain-adaptation zoo that ``params.yaml``'s ``adapt`` section defines: digit-pair
    classifiers of the clean digits in shards of ``adapt.zoo.shard_size``, seeds from
    ``seed * 10 +`` :data:`ZOO_SEED`, fitted on ``banks`` (:func:`digit_banks`)."""
    z = adapt.zoo
    zoo_seed = seed * 10 + ZOO_SEED
    fit = pair_fit(z)
    nets = plan_pair_zoo(z.n_nets, z.n_val, z.n_test, z.novel_pairs, zoo_seed)
    shards = [nets[i : i + z.shard_size] for i in range(0, len(nets), z.shard_size)]
    spec = pair_spec(banks["x_source_train"].shape[-1], fit.hidden)
    recipe = {
        "seed": zoo_seed,
        "corruption": dataclasses.asdict(adapt.corruption),
        "fit": dataclasses.asdict(fit),
        "digits_test": z.digits_test,
        "images_per_digit": z.images_per_digit,
        "threads_per_task": z.threads_per_task,
        "environment": environment,  # the stage's code, torch, CPU: what else makes the bytes
        "inputs": tensors_hash(banks),  # the digit banks' bytes: a new data release or corruption refits
        "device": device,
    }
    return ZooPlan(
        stage="adapt_zoo",
        task=_fit_task,
        shared=banks,
        shards=[(s, fit) for s in shards],
        specs=[spec] * len(shards),
        fingerprints=[fingerprint({"recipe": recipe, "nets": [dataclasses.asdict(n) for n in s]}) for s in shards],
        recipe=recipe,
        device=device,
        threads=z.threads_per_task,
        desc="classifier shards",
        context={"nets": shards, "novel": novel_pairs(z.novel_pairs, zoo_seed)},
    )


def record(plan: ZooPlan, out: Path) -> tuple[dict, dict]:
    """``out/manifest.csv`` (each net's pair, split and baselines) and the summary and
    ``zoo.json`` of a fitted domain-adaptation zoo."""
    spec, novel = plan.specs[0], plan.context["novel"]
    rows = []
    for k, nets in enumerate(plan.context["nets"]):
        _, extras, hashes = read_planned_shard(out / "shards" / shard_name(k), spec, [n.net_id for n in nets])
        for i, (n, h) in enumerate(zip(nets, hashes, strict=True)):
            row = {"net_id": n.net_id, "pair": n.pair, "digits": "{}-{}".format(*PAIRS[n.pair]), "split": n.split}
            row |= {b: f"{float(extras[b][i]):.6g}" for b in BASELINES}
            rows.append(row | {"shard": shard_name(k), "sha256": h})
    write_rows(out / "manifest.csv", rows)
    summary = summarize(rows, novel)
    return summary, {"spec": spec.to_dict(), "novel_pairs": novel, "recipe": plan.recipe, "summary": summary}


def _stage_plan(adapt: Any, *, variant: str, seed: int, out: Path, device: str, environment: dict) -> ZooPlan:
    """The plan of this family's stage (:class:`~pipeline.zoo.family.ZooFamily`)."""
    banks = digit_banks(adapt, seed, environment, out)
    return zoo_plan(adapt, seed, device, environment, banks)


FAMILY = ZooFamily(sections=("adapt",), plan=_stage_plan, record=record, out="data/adapt/zoo")
