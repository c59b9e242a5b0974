"""The structure-agnostic baseline: an MLP on the flattened parameter vector."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from pipeline.config import setting
from pipeline.models import DataShape


class FlatMLP(nn.Module):
    r"""MLP on flattened (normalized) parameters.

    .. math:: h_0 = \theta \in \mathbb R^P,\quad h_{k+1} = \mathrm{Dropout}(\mathrm{SiLU}(W_k h_k + b_k)),\quad
              \hat y = W_{\text{out}} h_K

    Not invariant to hidden-neuron permutations: the reason it is the baseline.

    Args:
        in_dim: ``P``, parameters per net.  n_classes: logits.
        hidden, layers, dropout: width and number of hidden layers, dropout.
    Shapes: ``(B, P)`` -> ``(B, n_classes)``.
    """

    input_kind = "flat"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        mods: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout)]
            width = hidden
        mods.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*mods)

    def forward(self, flat: Tensor) -> Tensor:
        return self.net(flat)


@dataclass(frozen=True)
class Settings:
    """``<section>.mlp`` of ``params.yaml``."""

    hidden: int = setting(256, gt=0)
    layers: int = setting(3, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)


INPUT_KIND = "flat"
LABEL = "MLP on flattened weights"
SHORT_LABEL = "MLP"  # in "MLP + permutation augmentation"
REPORT_ORDER = 10  # a baseline


def build(s: Settings, shape: DataShape) -> FlatMLP:
    """The flattened-parameter MLP for ``shape.n_params`` inputs."""
    return FlatMLP(shape.n_params, shape.n_classes, s.hidden, s.layers, s.dropout)
