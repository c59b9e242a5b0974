"""How the nets of a weight space compute: the INR forward pass a metanetwork's probes replay
(:class:`ForwardSpec`) and the batched ReLU MLP of the classifier zoos (:func:`mlp_forward`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.weightspace.spec import Params, ParamSpec


@dataclass(frozen=True)
class ForwardSpec:
    """How to run the networks of a zoo from their normalized graphs.

    Attributes:
        activation: hidden activation, ``"sin"`` (SIREN: ``sin(omega0 z)``) or ``"relu"``.
        omega0: SIREN frequency.  output_offset: constant added to the output.
        weight_stats, bias_stats: per parameter layer ``l`` the ``(mean, std)`` used to normalize
            ``W_l`` and ``b_l`` (the graph's edge / node features of layer ``l``/``l+1``).
    """

    activation: str
    omega0: float
    output_offset: float
    weight_stats: tuple[tuple[float, float], ...]
    bias_stats: tuple[tuple[float, float], ...]


def mlp_forward(params: Params, spec: ParamSpec, x: Tensor) -> Tensor:
    """Differentiable batched ReLU MLP: ``x`` ``(n, D)`` shared or ``(B, n, D)`` per net ->
    logits ``(B, n, C)``."""
    h = x
    n = spec.n_layers
    for l in range(n):
        h = torch.matmul(h, params[f"layers.{l}.weight"].transpose(1, 2)) + params[f"layers.{l}.bias"].unsqueeze(1)
        if l < n - 1:
            h = F.relu(h)
    return h
