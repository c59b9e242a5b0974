"""The structure-agnostic baseline: an MLP on the flattened parameter vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import MAX_WIDTH, setting
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

    def __init__(self, in_dim: int, n_classes: int, *, hidden: int = 256, layers: int = 3, dropout: float = 0.0):
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


class FlatMLPEditor(nn.Module):
    r"""The flat baseline as an editor: a residual update of the parameter vector.

    .. math:: \theta' = \theta + \alpha\,\mathrm{MLP}(\theta),\qquad \alpha_0 = \texttt{init\_scale}

    Not equivariant: permuting the input net's hidden neurons does not permute the update
    alike (the ``_perm`` variant learns it from permuted copies).

    Args:
        in_dim: ``P``.  hidden, layers, dropout: as :class:`FlatMLP`.  init_scale: :math:`\alpha_0`.
    Shapes: ``(B, P)`` -> edited ``(B, P)``, same layout.
    """

    input_kind = "flat"

    def __init__(
        self, in_dim: int, *, hidden: int = 256, layers: int = 3, dropout: float = 0.0, init_scale: float = 1e-3
    ):
        super().__init__()
        self.delta = FlatMLP(in_dim, in_dim, hidden=hidden, layers=layers, dropout=dropout)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, flat: Tensor) -> Tensor:
        return flat + self.scale * self.delta(flat)


@dataclass(frozen=True)
class Settings:
    """``<section>.mlp`` of ``params.yaml``."""

    hidden: int = setting(256, gt=0, le=MAX_WIDTH)
    layers: int = setting(3, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)
    # its own augmentation (pipeline.augment.model_augment); "": the stage's (train.augment)
    augment: str = setting("", one_of=("", "none", "sign_flip", "inr_affine", "sign_flip+inr_affine"))


INPUT_KIND = "flat"
LABEL = "MLP on flattened weights"
SHORT_LABEL = "MLP"  # in "MLP + permutation augmentation"
REPORT_ORDER = 10  # a baseline


def build(s: Settings, shape: DataShape) -> FlatMLP:
    """The flattened-parameter MLP for ``shape.n_params`` inputs."""
    return FlatMLP(shape.n_params, shape.n_classes, hidden=s.hidden, layers=s.layers, dropout=s.dropout)


def build_editor(s: Settings, shape: DataShape, init_scale: float) -> FlatMLPEditor:
    """The flattened-parameter editor for ``shape.n_params`` parameters."""
    return FlatMLPEditor(shape.n_params, hidden=s.hidden, layers=s.layers, dropout=s.dropout, init_scale=init_scale)
