"""Shared cases for the symmetry tests of weight-space models: layouts, parameters, wrong couplings."""

from __future__ import annotations

import torch

from pipeline.weightspace.spec import Params, ParamSpec
from pipeline.zoo.siren import siren_spec

# two SIREN layouts: two equal hidden layers, and three hidden layers of different widths
SIREN_LAYOUTS = {"siren2-16-16-1": siren_spec([16, 16]), "siren2-8-12-6-1": siren_spec([8, 12, 6])}


def random_params(spec: ParamSpec, batch: int, seed: int = 0) -> Params:
    """A generic point of the weight space: ``N(0, 1)`` entries, ``{name: (batch, *shape)}``."""
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.randn(batch, *t.shape, generator=g) for t in spec.tensors}


def rows_only(params: Params, layer: int) -> Params:
    """Wrong coupling: reverse hidden ``layer``'s neurons in ``W_{l-1}``, ``b_{l-1}`` but not in ``W_l``."""
    out = dict(params)
    for name in (f"layers.{layer - 1}.weight", f"layers.{layer - 1}.bias"):
        out[name] = params[name].flip(1)
    return out


def swap_inputs(params: Params) -> Params:
    """Wrong coupling: reverse the (unpermutable) input neurons, the columns of ``W_0``."""
    out = dict(params)
    out["layers.0.weight"] = params["layers.0.weight"].flip(2)
    return out
