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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.graphs.neural_graph import graph_template
from pipeline.io import fingerprint, read_json
from pipeline.runs import GraphData, Task
from pipeline.tasks.editing import subset
from pipeline.tasks.job import Extras, Fitting, JobKind
from pipeline.weightspace.forward import mlp_forward
from pipeline.weightspace.normalize import Stats, invert_stats
from pipeline.weightspace.spec import ParamSpec, flatten, unflatten
from pipeline.zoo.adapt_zoo import BANKS_FILE, read_banks


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


def zoo_banks(zoo_dir: Path, zoo_info: dict) -> dict[str, Tensor]:
    """The image banks a zoo was trained and scored with: its ``banks.safetensors``, checked
    against its ``zoo.json`` recipe."""
    return read_banks(zoo_dir / BANKS_FILE, expect=zoo_info["recipe"]["inputs"])


def load_adapt_data(graphs_dir: Path, zoo_dir: Path, n_train: int) -> AdaptData:
    """The graphs (target: each net's pair), ``n_train`` training nets drawn once (0: all), and
    the zoo's image banks."""
    data = GraphData.load(graphs_dir)
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    splits = dict(data.splits)
    splits["train"] = subset(splits["train"], n_train, template, seed=0)
    info = read_json(zoo_dir / "zoo.json")
    derived = {"n_train": n_train, "zoo": fingerprint(info["recipe"])}
    return AdaptData(data.meta, splits, derived, zoo_banks(zoo_dir, info))


def adapt_extras(fitting: Fitting) -> Extras:
    """The unadapted test nets' scores (``reference``) and per-net target accuracies
    (``reference_predictions``), beside the adapted ones."""
    test = fitting.data.splits["test"]
    unadapted = flatten(test.to_params(fitting.template), fitting.template.spec)
    reference = fitting.objective.metrics(unadapted, test.y)  # no adaptation
    reference_items = fitting.objective.items(unadapted, test.y).tolist()
    n_train = len(fitting.data.splits["train"])
    return Extras(
        finish=lambda res: {
            "reference": reference,
            "reference_predictions": reference_items,
            "n_train": n_train,
            "n_test": len(test),
        }
    )


def _objective(data: AdaptData) -> Adaptation:
    return adaptation_objective(data.meta, data.banks)


def _pair_classes(objective: Adaptation) -> int:
    """A binary classifier per net."""
    return 2


ADAPTATION = JobKind(objective=_objective, n_out=_pair_classes, editor=True, extras=adapt_extras, label="adapt ")


def _adapt_data(section: Any, paths: dict[str, Path]) -> AdaptData:
    return load_adapt_data(paths["graphs"], paths["zoo"], section.n_train)


# ReLU nets have no sign symmetry: no augmentation; "_perm" models add random permutations
TASKS = {
    "adapt": Task(
        kind=ADAPTATION,
        section="adapt",
        paths={"graphs": "data/adapt/graphs", "zoo": "data/adapt/zoo", "out": "data/adapt/train"},
        load=_adapt_data,
        augment=None,
        extra=("init_scale",),
    )
}
