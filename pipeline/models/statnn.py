r"""StatNN (Unterthiner et al., 2020): per-tensor statistics of the weights, then an MLP.

For every parameter tensor :math:`T` of the spec (each layer's weights and biases; a KAN's
coefficients and scales):

.. math::
    s(T) = [\mathrm{mean}, \mathrm{var}, q_0, q_{25}, q_{50}, q_{75}, q_{100}](T),\qquad
    \hat y = \mathrm{MLP}([s(T_1) \Vert \dots \Vert s(T_K)])

Every statistic is a symmetric function of the tensor's entries, so the model is invariant to
any permutation of neurons (hidden or not) by construction: the strong baseline for
generalization prediction, blind to how weights are wired.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import setting
from pipeline.models import DataShape
from pipeline.weightspace.spec import ParamSpec, unflatten

N_STATS = 7
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def tensor_statistics(x: Tensor, quantiles: Tensor | None = None) -> Tensor:
    """``(B, ...)`` -> ``(B, 7)``: mean, variance and the 0/25/50/75/100 % quantiles of each row.

    ``quantiles``: the levels :data:`QUANTILES` as a tensor on ``x``'s device (a model keeps them
    as a buffer: building them from a Python list is a blocking host-to-device copy); made here
    if ``None``.
    """
    flat = x.flatten(1)
    if quantiles is None:
        quantiles = torch.tensor(QUANTILES, dtype=flat.dtype, device=flat.device)
    q = torch.quantile(flat, quantiles.to(flat.dtype), dim=1).T
    var = flat.var(dim=1, unbiased=False)
    return torch.cat([flat.mean(dim=1, keepdim=True), var.unsqueeze(1), q], dim=1)


class StatNN(nn.Module):
    """MLP on per-tensor statistics. Shapes: ``(B, P)`` flattened parameters -> ``(B, n_classes)``.

    Args:
        spec: the weight space.  n_classes: outputs.
        hidden, layers, dropout: the MLP's width, hidden layers and dropout.
    """

    input_kind = "flat"

    def __init__(self, spec: ParamSpec, n_classes: int, hidden: int = 256, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.spec = spec
        self.register_buffer("quantiles", torch.tensor(QUANTILES), persistent=False)
        width = N_STATS * len(spec.tensors)
        self.norm = nn.BatchNorm1d(width, affine=False)  # statistics span orders of magnitude
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        mods.append(nn.Linear(width, n_classes))
        self.mlp = nn.Sequential(*mods)

    def forward(self, flat: Tensor) -> Tensor:
        params = unflatten(flat, self.spec)
        stats = torch.cat([tensor_statistics(params[t.name], self.quantiles) for t in self.spec.tensors], dim=1)
        return self.mlp(self.norm(stats))


@dataclass(frozen=True)
class Settings:
    """``<section>.statnn`` of ``params.yaml``."""

    hidden: int = setting(256, gt=0)
    layers: int = setting(3, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)


INPUT_KIND = "flat"
LABEL = "StatNN (per-tensor statistics)"
REPORT_ORDER = 20  # a baseline


def build(s: Settings, shape: DataShape) -> StatNN:
    """StatNN on the per-tensor statistics of ``shape.spec``."""
    return StatNN(shape.spec, shape.n_classes, s.hidden, s.layers, s.dropout)
