r"""Domain adaptation: change a classifier's weights so that it works on a corrupted domain.

An adapter (a model's editor, :func:`pipeline.models.build_editor`) maps the normalized
parameters :math:`\theta` of a binary classifier trained on clean digits of its pair
(:mod:`pipeline.zoo.adapt_zoo`) to :math:`\theta' = \theta + \alpha\,\Delta(\theta)`, same layout.
It learns from the corrupted *training* digits of each training net's pair:

.. math::
    \mathcal L_b = \frac1n \sum_{i=1}^{n} \mathrm{CE}\big(f_{\theta'_b}(\tilde x_i),\, y_i\big),
    \qquad \tilde x = \mathrm{corrupt}(x)

and is scored zero-shot: a test net is adapted from its weights alone (no target label, no
target image of its own), then classifies corrupted *held-out* digits of its pair. Metrics of a
split: ``acc`` (target accuracy, the papers' metric, selected on), ``loss`` (the cross-entropy
there), ``source_acc`` (the adapted net on clean held-out digits: what adaptation costs on the
source) and ``novel_acc`` (target accuracy over the nets of the novel pairs, which no training
net has; test split only).

Everything is batched over nets; the same functions serve as training loss and metric.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.augment import augmenter, model_augment
from pipeline.data import load_images
from pipeline.graphs.neural_graph import graph_template
from pipeline.io import fingerprint, read_json
from pipeline.models import build_editor, split_model_name
from pipeline.runs import GraphData, TaskContext, result_dict
from pipeline.saved import model_card
from pipeline.tasks.editing import subset
from pipeline.train import TrainSettings, data_shape, fit_model, model_inputs
from pipeline.weightspace.forward import mlp_forward
from pipeline.weightspace.normalize import Stats, invert_stats
from pipeline.weightspace.spec import ParamSpec, flatten, unflatten
from pipeline.zoo.adapt_zoo import Corruption, pair_banks


@dataclass(frozen=True)
class Adaptation:
    """The adaptation objective of :func:`pipeline.train.fit_model`.

    ``out`` is an adapter's ``(B, P)`` adapted parameters (normalized with ``stats``), ``y`` the
    ``(B,)`` pair index of each net; the banks (:class:`~pipeline.zoo.adapt_zoo.PairBanks`) hold
    every pair's images: ``x_train`` ``(45, n, D)`` corrupted training digits with labels
    ``y_train`` ``(45, n)``; ``x_test`` / ``x_source`` ``(45, m, D)`` corrupted / clean held-out
    digits with labels ``y_test``; ``novel`` ``(45,)`` bool.
    """

    spec: ParamSpec
    stats: Stats
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    x_source: Tensor
    y_test: Tensor
    novel: Tensor
    select: str = "acc"
    maximize: bool = True

    def to(self, device: torch.device) -> Adaptation:
        move = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if f.name.startswith(("x_", "y_"))
        }
        return dataclasses.replace(self, novel=self.novel.to(device), **move)

    def logits(self, out: Tensor, x: Tensor, pair: Tensor) -> Tensor:
        """Net ``b`` (adapted, normalized) on the images ``x[pair[b]]``: ``(B, n, 2)``."""
        params = invert_stats(unflatten(out, self.spec), self.spec, self.stats)
        return mlp_forward(params, self.spec, x[pair])

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy on the corrupted training digits, a 0-dim tensor on ``out``'s device."""
        logits = self.logits(out, self.x_train, y)
        return F.cross_entropy(logits.flatten(0, 1), self.y_train[y].flatten())

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        """``acc``, ``loss``, ``source_acc`` and (when the split has nets of novel pairs) ``novel_acc``
        on the held-out digits, as Python floats."""
        labels = self.y_test[y]
        target = self.logits(out, self.x_test, y)
        hit = (target.argmax(-1) == labels).float().mean(1)  # (B,) per net
        source = (self.logits(out, self.x_source, y).argmax(-1) == labels).float().mean()
        loss = F.cross_entropy(target.flatten(0, 1), labels.flatten())
        res = {"acc": float(hit.mean()), "loss": float(loss), "source_acc": float(source)}
        novel = self.novel[y]
        if bool(novel.any()):
            res["novel_acc"] = float(hit[novel].mean())
        return res

    def items(self, out: Tensor, y: Tensor) -> Tensor:
        """Per net: its target accuracy on the corrupted held-out digits ``(B,)`` (``acc`` is their mean)."""
        return (self.logits(out, self.x_test, y).argmax(-1) == self.y_test[y]).float().mean(1)


def adaptation_objective(meta: dict, banks: dict[str, Tensor]) -> Adaptation:
    """The objective of a graphs directory's ``meta`` and the zoo's banks (:func:`load_adapt_data`)."""
    stats = {k: tuple(v) for k, v in meta["norm_stats"].items()}
    novel = torch.zeros(banks["y_train"].shape[0], dtype=torch.bool)
    novel[meta["novel_pairs"]] = True
    return Adaptation(
        ParamSpec.from_dict(meta["spec"]),
        stats,
        banks["x_target_train"],
        banks["y_train"],
        banks["x_target_test"],
        banks["x_source_test"],
        banks["y_test"],
        novel,
    )


@dataclass(frozen=True)
class AdaptData(GraphData):
    """The graphs of an adaptation zoo with its image banks (what each task receives)."""

    banks: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def zoo_banks(zoo_info: dict) -> dict[str, Tensor]:
    """The image banks a zoo was trained and scored with, rebuilt from its ``zoo.json`` recipe."""
    r = zoo_info["recipe"]
    images, digits = load_images("mnist_offline")
    banks = pair_banks(
        images,
        digits,
        Corruption(**r["corruption"]),
        r["seed"],
        r["digits_test"],
        r["fit"]["pool"],
        r["images_per_digit"],
    )
    return banks.tensors()


def load_adapt_data(graphs_dir: Path, zoo_dir: Path, n_train: int) -> AdaptData:
    """The graphs (target: each net's pair), ``n_train`` training nets drawn once (0: all), and
    the zoo's image banks."""
    data = GraphData.load(graphs_dir)
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    splits = dict(data.splits)
    splits["train"] = subset(splits["train"], n_train, template, seed=0)
    info = read_json(zoo_dir / "zoo.json")
    derived = {"n_train": n_train, "zoo": fingerprint(info["recipe"])}
    return AdaptData(data.meta, splits, derived, zoo_banks(info))


def adapt_one(
    data: AdaptData,
    model_name: str,
    model_cfg,
    seed: int,
    ctx: TaskContext,
    settings: TrainSettings,
    augment: str,
    init_scale: float,
) -> dict:
    """Train one adapter; return its result with the unadapted test nets' metrics as ``reference``."""
    device, where = ctx.start()
    torch.manual_seed(seed)
    meta, splits = data.meta, data.splits
    spec = ParamSpec.from_dict(meta["spec"])
    template = graph_template(spec)
    objective = adaptation_objective(meta, data.banks)
    shape = data_shape(splits["train"], template, 2)
    base, permutations = split_model_name(model_name)
    model = build_editor(base, model_cfg, shape, init_scale)
    inputs = {s: model_inputs(g, template, model.input_kind) for s, g in splits.items()}
    test = splits["test"]
    unadapted = flatten(test.to_params(template), spec)
    reference = objective.metrics(unadapted, test.y)  # no adaptation
    reference_items = objective.items(unadapted, test.y).tolist()
    t0 = time.time()
    res = fit_model(
        model,
        inputs["train"],
        inputs["val"],
        inputs["test"],
        settings,
        seed,
        objective,
        on_epoch=ctx.reporter(f"adapt {model_name} seed {seed}", "acc", settings.epochs),
        augment=augmenter(model_augment(augment, model_cfg), model.input_kind, spec, permutations),
        device=device,
        **ctx.resumable({}),
    )
    out = result_dict(res, model_name, seed, model_cfg, time.time() - t0)
    out["card"] = model_card(model_name, model_cfg, shape, meta, objective, init_scale)
    out.update(best_val_metric=res.best_val, **{f"test_{k}": v for k, v in res.test.items()})
    out.update(reference=reference, reference_predictions=reference_items, n_train=len(splits["train"]))
    out.update(n_test=len(test), **where)
    return out
