r"""DeepSets baseline (Zaheer et al., 2017) over the hidden neurons of a weight space.

Every hidden neuron ``j`` of hidden layer ``l`` becomes one element of the set of layer ``l``.
Its feature vector gathers every parameter entry indexed by that neuron, read from the spec's
axis tags: for an MLP / SIREN (:func:`~pipeline.weightspace.spec.mlp_spec`) that is

.. math::
    u_{l,j} = [\,W_{l-1}[j, :]\ \Vert\ b_{l-1}[j]\ \Vert\ W_l[:, j]\,]
    \in \mathbb R^{n_{l-1} + 1 + n_{l+1}}

(incoming weight row, bias, outgoing weight column). A row or column indexed by *another*
hidden layer is itself reordered when that layer is permuted, so its entries are replaced by
their sorted values (the sorted vector is a complete invariant of a set of scalars); rows and
columns indexed by the input or output layer keep their order, since those neurons are not
permutable. The widths differ per layer, so each hidden layer has its own element encoder
:math:`\phi_l` (no padding). With :math:`\mathrm{fix}` the parameters that touch no hidden
neuron (the output bias of an MLP), flattened:

.. math::
    z_l = \frac{1}{n_l}\sum_{j=1}^{n_l} \phi_l(u_{l,j}),\qquad
    \hat y = \rho([\,z_1 \Vert \dots \Vert z_{L-1} \Vert \mathrm{fix}\,])

:math:`\phi_l`: ``Linear - ReLU - Linear - ReLU`` to ``hidden`` channels; :math:`\rho`: an MLP
(``layers`` hidden layers of width ``hidden``, ReLU, dropout). Invariant to every permutation
of the hidden neurons (one mean per layer, sorted cross-layer entries). A neuron's incoming
row, bias and outgoing column stay in one element, so permuting rows without the matching
columns changes the set, and so does permuting input neurons. Interactions between neurons of
neighbouring layers are lost beyond the sorted rows: the reason it is a baseline (the Set NN /
inr2vec-architecture row of the DWSNets table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import MAX_WIDTH, setting
from pipeline.models import DataShape
from pipeline.weightspace.spec import Params, ParamSpec, unflatten


def neuron_elements(params: Params, spec: ParamSpec, layer: int) -> Tensor:
    """Set elements of hidden ``layer``: one feature row per neuron.

    Every tensor with an axis tagged ``layer`` contributes, in spec order: that axis becomes the
    element axis, each other axis tagged with a hidden layer is sorted (per remaining index), and
    what is left is flattened. For an MLP: ``[W_{l-1}[j, :], b_{l-1}[j], W_l[:, j]]``.

    Shapes: zoo batch ``{name: (B, *shape)}`` -> ``(B, n_layer, d_layer)`` (:func:`element_width`).
    """
    hidden = set(spec.hidden_layers)
    parts = []
    for t in spec.tensors:
        if layer not in t.axes:
            continue
        axis = t.axes.index(layer)
        x = params[t.name].movedim(axis + 1, 1)  # (B, n_layer, *other axes)
        others = t.axes[:axis] + t.axes[axis + 1 :]
        for d, other in enumerate(others):
            if other is not None and other in hidden:
                x = x.sort(dim=d + 2).values
        parts.append(x.reshape(x.shape[0], x.shape[1], -1))
    return torch.cat(parts, dim=2)


def element_width(spec: ParamSpec, layer: int) -> int:
    """Feature width ``d_layer`` of :func:`neuron_elements` (``n_{l-1} + 1 + n_{l+1}`` for an MLP)."""
    return sum(t.numel // spec.layer_sizes[layer] for t in spec.tensors if layer in t.axes)


def fixed_tensors(spec: ParamSpec) -> tuple[str, ...]:
    """Names of the tensors indexed by no hidden neuron (permutation-invariant as they are)."""
    hidden = set(spec.hidden_layers)
    return tuple(t.name for t in spec.tensors if not hidden & set(t.neuron_layers))


class DeepSets(nn.Module):
    r"""DeepSets classifier / regressor of a weight space: one set of neurons per hidden layer.

    .. math::
        \hat y = \rho\big(\big\Vert_{l=1}^{L-1} \tfrac{1}{n_l}\textstyle\sum_j \phi_l(u_{l,j})
        \ \Vert\ \mathrm{fix}\big)

    (module docstring for :math:`u_{l,j}`, :math:`\mathrm{fix}`).

    Args:
        spec: the weight space.  n_classes: outputs.
        hidden: width of :math:`\phi_l`, of the pooled codes and of :math:`\rho`.
        layers: hidden layers of :math:`\rho`.  dropout: dropout in :math:`\rho`.
    Shapes: ``(B, P)`` flattened parameters (:func:`~pipeline.weightspace.spec.flatten` order)
    -> ``(B, n_classes)``; internally ``(B, n_l, d_l)`` elements -> ``(B, n_l, hidden)`` ->
    ``(B, hidden)`` per hidden layer.
    """

    input_kind = "flat"

    def __init__(self, spec: ParamSpec, n_classes: int, *, hidden: int = 64, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.spec = spec
        self.hidden_layers = tuple(spec.hidden_layers)
        self.fixed = fixed_tensors(spec)
        self.phi = nn.ModuleList(
            nn.Sequential(nn.Linear(element_width(spec, l), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            for l in self.hidden_layers
        )
        width = hidden * len(self.hidden_layers) + sum(spec.tensor(n).numel for n in self.fixed)
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        mods.append(nn.Linear(width, n_classes))
        self.rho = nn.Sequential(*mods)

    def forward(self, flat: Tensor) -> Tensor:
        params = unflatten(flat, self.spec)
        codes = [
            phi(neuron_elements(params, self.spec, l)).mean(dim=1)
            for l, phi in zip(self.hidden_layers, self.phi, strict=True)
        ]
        codes += [params[name].reshape(flat.shape[0], -1) for name in self.fixed]
        return self.rho(torch.cat(codes, dim=1))


@dataclass(frozen=True)
class Settings:
    """``<section>.deepsets`` of ``params.yaml``."""

    hidden: int = setting(64, gt=0, le=MAX_WIDTH)
    layers: int = setting(2, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)


INPUT_KIND = "flat"
LABEL = "DeepSets over hidden neurons"
REPORT_ORDER = 30  # a baseline


def build(s: Settings, shape: DataShape) -> DeepSets:
    """DeepSets over the hidden neurons of ``shape.spec``."""
    return DeepSets(shape.spec, shape.n_classes, hidden=s.hidden, layers=s.layers, dropout=s.dropout)
