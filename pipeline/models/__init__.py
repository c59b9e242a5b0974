"""Metanetworks: one module per model, found by name.

A model ``<name>`` is the module ``pipeline/models/<name>.py`` defining

* ``Settings``: a frozen dataclass of its hyper-parameters, read (and validated, unknown keys
  named) from ``params.yaml`` sections such as ``train.<name>`` or ``kan.train.<name>``;
* ``INPUT_KIND``: ``"flat"`` (a ``(B, P)`` normalized parameter vector) or ``"graph"`` (a PyG
  batch of neural graphs);
* ``build(settings, shape: DataShape) -> nn.Module`` mapping that input to ``(B, n_classes)``
  (class logits or regression targets);
* optionally ``build_editor(settings, shape, init_scale) -> nn.Module``, an equivariant editor
  mapping the same input to edited ``(B, P)`` parameters (the INR editing task);
* optionally ``ANY_ARCHITECTURE = True``: it also reads zoos of several architectures (no single
  spec; ``DataShape.template`` is ``None``), as the graph models do;
* ``LABEL``, its name in reports, and ``REPORT_ORDER``, its rows' position (baselines first);
  optionally ``SHORT_LABEL`` (in ``"<SHORT_LABEL> + permutation augmentation"``),
  ``variant(settings: dict) -> str`` (the variant with its own published numbers, ``""`` for
  none) and ``variant_label(settings: dict) -> str`` (:func:`model_label`, :func:`variant_key`).

Adding a metanetwork is that one module plus its name in a ``models`` list of ``params.yaml``
(and its published numbers, if any, in ``pipeline/published_results.yaml``).

A name in a ``models`` list is ``<model>[_perm][@<variant>]``: ``_perm`` trains with random
hidden-neuron permutations of every batch; ``@<variant>`` is the same model with the settings
of the section ``<model>@<variant>``, overrides of ``<model>``'s section (``ng_gnn@probes:
{probe_features: 16}``), so one model can be listed several times with different settings.
Helper modules (``layers``, ``probes``) define no ``build`` and are not models.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from torch import nn

from pipeline.weightspace.forward import ForwardSpec

if TYPE_CHECKING:
    from pipeline.graphs.neural_graph import GraphTemplate

PERM_SUFFIX = "_perm"
VARIANT_SEP = "@"


def split_model_name(name: str) -> tuple[str, bool]:
    """``"mlp_perm"`` -> ``("mlp", True)``: a ``_perm`` suffix trains the base model with random
    hidden-neuron permutations of every training batch (settings from the base model's section).
    A settings variant is dropped: ``"ng_gnn@probes"`` -> ``("ng_gnn", False)``."""
    name = name.split(VARIANT_SEP, 1)[0]
    if name.endswith(PERM_SUFFIX):
        return name[: -len(PERM_SUFFIX)], True
    return name, False


def settings_key(name: str) -> str:
    """The ``params.yaml`` section that holds the settings of listed model ``name``: the base
    model's, or its variant's. ``"mlp_perm"`` -> ``"mlp"``, ``"ng_gnn@probes"`` -> ``"ng_gnn@probes"``."""
    base, _ = split_model_name(name)
    _, sep, variant = name.partition(VARIANT_SEP)
    return f"{base}{sep}{variant}"


@functools.cache
def model_names() -> tuple[str, ...]:
    """Every model of this package: the modules that define ``build`` and ``Settings``."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "build") and hasattr(mod, "Settings"):
            names.append(info.name)
    return tuple(sorted(names))


def model_module(name: str) -> ModuleType:
    """The module of model ``name`` (a ``_perm`` suffix is ignored)."""
    base, _ = split_model_name(name)
    if base not in model_names():
        raise ValueError(f"unknown model {base!r}; known: {model_names()}")
    return importlib.import_module(f"{__name__}.{base}")


def settings_type(name: str) -> type:
    """The ``Settings`` dataclass of model ``name``."""
    return model_module(name).Settings


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about its inputs and targets."""

    n_params: int
    node_dim: int
    edge_dim: int
    n_pos: int
    n_out: int
    n_classes: int  # outputs: classes, or regression targets
    avg_log_degree: float
    forward_spec: ForwardSpec | None = None
    template: GraphTemplate | None = None  # the zoo's graph topology (and its ParamSpec); None: several
    n_layers: int = 0  # parameter layers (of the deepest net, in a zoo of several architectures)

    @property
    def spec(self):
        """The zoo's :class:`~pipeline.weightspace.spec.ParamSpec` (weight-space models need it)."""
        if self.template is None:
            raise ValueError("this model needs the zoo's ParamSpec: build DataShape with a template")
        return self.template.spec


def build_model(name: str, settings, shape: DataShape) -> nn.Module:
    """Instantiate model ``name`` (predictor: ``(B, n_classes)`` outputs) with its ``settings``."""
    return model_module(name).build(settings, shape)


def build_editor(name: str, settings, shape: DataShape, init_scale: float) -> nn.Module:
    """Instantiate the equivariant editor of model ``name`` (``(B, P)`` edited parameters)."""
    mod = model_module(name)
    if not hasattr(mod, "build_editor"):
        editors = [m for m in model_names() if hasattr(model_module(m), "build_editor")]
        raise ValueError(f"model {name!r} has no editor; models with one: {editors}")
    return mod.build_editor(settings, shape, init_scale)


# Reports: a model's name in tables, the key of its published number, its row position.


def model_label(name: str, config: dict) -> str:
    """Human-readable name of model ``name`` trained with ``config`` (its ``Settings`` as a dict).

    The module's ``LABEL``; a ``_perm`` suffix gives ``"<SHORT_LABEL> + permutation augmentation"``
    (``SHORT_LABEL`` defaults to ``LABEL``); a non-empty variant is appended in parentheses, as the
    module's ``variant_label(config)`` words it (default: the variant key). ``"NFN (NP)"``,
    ``"NG-T (16 probe features)"``, ``"MLP + permutation augmentation"``.
    """
    mod = model_module(name)
    _, permuted = split_model_name(name)
    label = f"{getattr(mod, 'SHORT_LABEL', mod.LABEL)} + permutation augmentation" if permuted else mod.LABEL
    words = mod.variant_label(config) if hasattr(mod, "variant_label") else _variant(mod, config)
    return f"{label} ({words})" if words else label


def variant_key(name: str, config: dict) -> str:
    """Key of the published number that model ``name`` trained with ``config`` compares with:
    the name (``_perm`` suffix kept, settings variant dropped), plus ``+<variant>`` when the
    module's ``variant(config)`` is not empty. ``"nfn+hnp"``, ``"ng_t+probes"``, ``"mlp_perm"``."""
    name = name.split(VARIANT_SEP, 1)[0]
    variant = _variant(model_module(name), config)
    return f"{name}+{variant}" if variant else name


def _variant(mod: ModuleType, config: dict) -> str:
    return mod.variant(config) if hasattr(mod, "variant") else ""


def report_order(names: Iterable[str]) -> list[str]:
    """``names`` in report order: by their module's ``REPORT_ORDER`` (baselines first; modules
    without one last); under each model its plain run first, its settings variants
    (``@<variant>``) by name, then its ``_perm`` runs."""

    def key(name: str) -> tuple:
        base, permuted = split_model_name(name)
        return getattr(model_module(name), "REPORT_ORDER", float("inf")), base, permuted, name

    return sorted(dict.fromkeys(names), key=key)
