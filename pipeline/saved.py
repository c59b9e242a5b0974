"""Trained metanetworks on disk: weights plus the model card that rebuilds them.

A model file is one safetensors file (no pickle: loading runs no code): the model's
``state_dict`` at its best validation epoch, and in the metadata key ``metazoo`` a JSON *model
card* with everything :func:`load` needs to rebuild the module without the training data:

* ``model`` (``"ng_t"``, ``"mlp_perm"``), ``settings`` (its ``Settings`` fields), ``kind``
  (``"predictor"`` or ``"editor"``, with ``init_scale``);
* ``shape``: the scalar fields of :class:`~pipeline.models.DataShape` (sizes, PNA's mean
  log-degree of the training graphs);
* ``graphs``: the parts of the graphs' ``meta.json`` that define the input (the parameter
  spec, the normalization statistics, the INR's forward pass);
* ``objective``: ``classification`` with its class count, or ``regression`` with the training
  targets' mean and std (predictions are returned in the targets' own units);
* what the training stage adds: ``stage``, ``seed``, the ``test`` metrics it recorded, the
  run's ``fingerprint``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from pipeline.config import ConfigError, settings_from_dict
from pipeline.graphs.cnn_graphs import cnn_graph_set
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import CorruptFileError, load_tensors, read_metadata, save_tensors
from pipeline.models import DataShape, build_editor, build_model, model_names, settings_type, split_model_name
from pipeline.train import forward_spec_from_meta, model_inputs
from pipeline.weightspace.normalize import apply_stats
from pipeline.weightspace.spec import ParamSpec
from pipeline.zoo.cnn import CNNArch

CARD_KEY = "metazoo"
GRAPH_KEYS = ("spec", "norm_stats", "forward", "kind", "n_targets", "task", "architectures", "kernel_slot")


def model_card(
    model: str, settings: Any, shape: Any, meta: dict, objective: Any, init_scale: float | None = None
) -> dict:
    """The card of a trained ``model`` (JSON-able): see the module docstring. ``objective``:
    :class:`~pipeline.train.Classification`, :class:`~pipeline.train.Regression`, or any other
    (named by its class: the editing objective, ``None`` for the KAN expressivity check)."""
    scalars = {
        f.name: getattr(shape, f.name) for f in dataclasses.fields(shape) if f.name not in ("forward_spec", "template")
    }
    if hasattr(objective, "n_classes"):
        obj = {"kind": "classification", "n_classes": objective.n_classes}
    elif hasattr(objective, "mean"):
        obj = {"kind": "regression", "mean": objective.mean.tolist(), "std": objective.std.tolist()}
    else:
        obj = {"kind": "none" if objective is None else type(objective).__name__.lower()}
    return {
        "model": model,
        "settings": dataclasses.asdict(settings),
        "kind": "predictor" if init_scale is None else "editor",
        "init_scale": init_scale,
        "shape": scalars,
        "graphs": {k: meta[k] for k in GRAPH_KEYS if k in meta},
        "objective": obj,
    }


def save_model(path: str | Path, state: dict[str, Tensor], card: dict) -> Path:
    """Atomically write ``state`` (CPU tensors) and ``card`` as one safetensors file."""
    return save_tensors(path, state, metadata={CARD_KEY: json.dumps(card, sort_keys=True)})


@dataclass
class SavedModel:
    """A trained metanetwork rebuilt from its file: the module (eval mode) and its card."""

    module: nn.Module
    card: dict
    path: Path

    @property
    def spec(self):
        """The :class:`~pipeline.weightspace.spec.ParamSpec` of the nets it reads."""

        return ParamSpec.from_dict(self.card["graphs"]["spec"])

    @torch.no_grad()
    def predict(self, params: dict[str, Tensor], batch_size: int = 512) -> Tensor:
        """Predictions for raw (unnormalized) nets ``params`` (spec tensors ``(B, ...)``).

        Classification: logits ``(B, n_classes)``; regression: ``(B, n_targets)`` in the
        targets' own units. Nets are normalized with the training zoo's statistics, as in training.
        """

        if self.card["kind"] != "predictor" or self.card["objective"]["kind"] not in ("classification", "regression"):
            raise ValueError(
                f"{self.path}: a {self.card['model']} {self.card['kind']} of stage {self.card.get('stage')!r} "
                "does not predict a target from a net (predictors of train / kan_train do)"
            )
        archs = self.card["graphs"].get("architectures")
        if self.card["graphs"].get("spec") is None:
            raise ValueError(
                f"{self.path}: trained on a zoo of {len(archs or [])} architectures; apply it to the graphs "
                "the cnn_graphs stage writes (pipeline.runs.GraphData), which carry each net's architecture"
            )
        spec = self.spec
        missing = [t.name for t in spec.tensors if t.name not in params]
        wrong = [
            f"{t.name} {tuple(params[t.name].shape[1:])} (model: {tuple(t.shape)})"
            for t in spec.tensors
            if t.name in params and tuple(params[t.name].shape[1:]) != tuple(t.shape)
        ]
        if missing or wrong:
            raise ValueError(
                f"{self.path}: the nets do not have the layout this model was trained on "
                f"(layers {list(spec.layer_sizes)}): missing {missing}, shape {wrong}"
            )
        template = graph_template(spec)
        normed = apply_stats(params, spec, self.card["graphs"]["norm_stats"])
        n = next(iter(params.values())).shape[0]
        if archs:  # a CNN zoo of one architecture: its graphs carry activation codes
            arch = CNNArch.from_dict(archs[0])
            graphs = cnn_graph_set(normed, arch, torch.zeros(n), torch.arange(n), self.card["graphs"]["kernel_slot"])
        else:
            graphs = GraphSet.from_params(normed, template, torch.zeros(n), torch.arange(n))
        data = model_inputs(graphs, template, self.module.input_kind)
        self.module.eval()
        out = torch.cat(
            [self.module(data.batch(torch.arange(s, min(s + batch_size, n)))) for s in range(0, n, batch_size)]
        )
        obj = self.card["objective"]
        if obj["kind"] == "regression":
            out = out * torch.tensor(obj["std"]) + torch.tensor(obj["mean"])
        return out


def read_card(path: str | Path) -> dict:
    """The model card of a model file; a missing file or a file without a card is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    meta = read_metadata(path)
    if CARD_KEY not in meta:
        raise CorruptFileError(f"{path}: not a metazoo model file (no model card in its metadata)")
    try:
        card = json.loads(meta[CARD_KEY])
    except ValueError as e:
        raise CorruptFileError(f"{path}: its model card is not valid JSON ({e})") from e
    if not isinstance(card, dict):
        raise CorruptFileError(f"{path}: its model card is not a mapping")
    return card


def build_from_card(card: dict, device: torch.device | str | None = None) -> nn.Module:
    """The untrained module a card describes (same layout as the trained one); its settings are
    checked by the rules of ``params.yaml``. ``device="meta"`` builds a shape-only module."""

    base, _ = split_model_name(card["model"])
    graphs = card["graphs"]
    # no spec: a zoo of several architectures (the model reads graphs only)
    template = graph_template(ParamSpec.from_dict(graphs["spec"])) if graphs.get("spec") else None
    forward = forward_spec_from_meta(graphs) if "forward" in graphs else None
    shape = DataShape(**card["shape"], forward_spec=forward, template=template)
    settings = settings_from_dict(settings_type(base), card["settings"], "settings")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if card["kind"] == "editor":
            return build_editor(base, settings, shape, card["init_scale"])
        return build_model(base, settings, shape)


def resolve(path: str | Path) -> Path:
    """A run given as its model file, its result file or its stem (``data/train/ng_t_seed0``)."""
    path = Path(path)
    if path.suffix == ".safetensors" or path.is_file() and path.suffix != ".json":
        return path
    return path.with_suffix(".safetensors") if path.suffix == ".json" else path.parent / f"{path.name}.safetensors"


def check_model_file(path: Path, card: dict) -> None:
    """Check a model file before any module is built: its card's settings by the rules of
    ``params.yaml``, and every stored tensor's shape against a shape-only (``meta`` device)
    build of the model the card describes. Raises :class:`CorruptFileError` naming the file."""

    try:
        model = card["model"]
        if split_model_name(model)[0] not in model_names():
            raise ConfigError(f"model: {model!r} is not one of {model_names()}")
        expected = {k: tuple(v.shape) for k, v in build_from_card(card, "meta").state_dict().items()}
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{path}: its model card is not valid ({type(e).__name__}: {e})") from e
    with safe_open(str(path), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    problems = [f"missing {k}" for k in expected if k not in stored]
    problems += [f"unexpected {k}" for k in stored if k not in expected]
    problems += [f"{k} {stored[k]} (card: {v})" for k, v in expected.items() if k in stored and stored[k] != v]
    if problems:
        shown = ", ".join(problems[:5]) + (f", and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CorruptFileError(f"{path}: the weights do not fit the model its card describes: {shown}")


def load(path: str | Path, device: torch.device | str = "cpu") -> SavedModel:
    """Rebuild a trained metanetwork from its model file (or run stem), weights checked: a file
    from another layout or version fails naming the file and the mismatched tensors."""
    path = resolve(path)
    card = read_card(path)
    check_model_file(path, card)
    module = build_from_card(card)
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CorruptFileError(f"{path}: the weights do not fit the model its card describes ({e})") from e
    return SavedModel(module.to(device).eval(), card, path)
