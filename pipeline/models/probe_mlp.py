r"""The probe-only baseline: an MLP on the input network's outputs at learned points.

.. math::
    \hat y = \mathrm{MLP}\big([f_\theta(p_1) \Vert \dots \Vert f_\theta(p_M)]\big),\qquad
    p_m \in \mathbb R^{n_0} \text{ learned}

:math:`f_\theta` is the input network itself, run on its raw parameters (the zoo's per-layer
normalization undone, :class:`~pipeline.models.probes.ForwardSpec`). The model reads what the
network computes at ``M`` points and nothing of its weights, so beside NG-GNN and NG-T with
probe features it separates what those learn from the weights from what sampling the function
gives. Invariant to every hidden-neuron permutation and sign flip by construction: the function
is. At the output nodes these are exactly NG-GNN's probe features
(:class:`~pipeline.models.probes.ProbeFeatures`).

Shapes: ``(B, P)`` normalized flat parameters -> ``(B, n_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import MAX_WIDTH, setting
from pipeline.models import DataShape
from pipeline.models.mlp import FlatMLP
from pipeline.weightspace.forward import ForwardSpec
from pipeline.weightspace.spec import ParamSpec, unflatten


class ProbeMLP(nn.Module):
    """MLP on the input MLP's outputs at ``n_probes`` learned points (module docstring).

    Args:
        spec: the weight space (an MLP: ``layers.<l>.weight`` / ``.bias``).
        forward_spec: activation, ``omega0``, output offset and the normalization to undo.
        n_classes: outputs.  n_probes: ``M``.  hidden, layers, dropout: the head MLP.
    """

    input_kind = "flat"

    def __init__(
        self,
        spec: ParamSpec,
        forward_spec: ForwardSpec,
        n_classes: int,
        *,
        n_probes: int = 16,
        hidden: int = 256,
        layers: int = 3,
        dropout: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        self.spec, self.fwd = spec, forward_spec
        n_in, n_out = spec.layer_sizes[0], spec.layer_sizes[-1]
        g = torch.Generator().manual_seed(seed)  # the same start as NG-GNN's probe points
        self.points = nn.Parameter(torch.rand(n_probes, n_in, generator=g) * 2 - 1)
        self.head = FlatMLP(n_probes * n_out, n_classes, hidden=hidden, layers=layers, dropout=dropout)

    def sample(self, flat: Tensor) -> Tensor:
        """The input networks at the probe points: ``(B, P)`` -> ``(B, M, n_out)``."""
        params = unflatten(flat, self.spec)
        h = self.points.to(flat.dtype).expand(flat.shape[0], -1, -1)
        n = self.spec.n_layers
        for l in range(n):
            w_mean, w_std = self.fwd.weight_stats[l]
            b_mean, b_std = self.fwd.bias_stats[l]
            w = params[f"layers.{l}.weight"] * w_std + w_mean
            b = params[f"layers.{l}.bias"] * b_std + b_mean
            z = torch.matmul(h, w.transpose(1, 2)) + b.unsqueeze(1)
            if l < n - 1:
                h = torch.sin(self.fwd.omega0 * z) if self.fwd.activation == "sin" else torch.relu(z)
            else:
                h = z + self.fwd.output_offset
        return h

    def forward(self, flat: Tensor) -> Tensor:
        return self.head(self.sample(flat).flatten(1))


@dataclass(frozen=True)
class Settings:
    """``<section>.probe_mlp`` of ``params.yaml``."""

    probe_features: int = setting(16, gt=0)  # M, as NG-GNN's and NG-T's probe_features
    hidden: int = setting(256, gt=0, le=MAX_WIDTH)
    layers: int = setting(3, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)


INPUT_KIND = "flat"
LABEL = "Probe-only MLP (the INR at learned points, no weights)"
SHORT_LABEL = "Probe-only MLP"
REPORT_ORDER = 35  # a baseline: after the weight-statistics models, before the equivariant ones


def build(s: Settings, shape: DataShape) -> ProbeMLP:
    """The probe-only MLP; needs the zoo's forward spec (an INR zoo's ``meta.json: forward``)."""
    if shape.forward_spec is None:
        raise ValueError("probe_mlp needs the zoo's forward spec (activation, normalization): an INR zoo")
    return ProbeMLP(
        shape.spec,
        shape.forward_spec,
        shape.n_classes,
        n_probes=s.probe_features,
        hidden=s.hidden,
        layers=s.layers,
        dropout=s.dropout,
    )
