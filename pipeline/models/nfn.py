r"""NFN (Zhou et al., 2023): neural functionals from NP or HNP equivariant layers, pool, MLP head.

The equivariant layer is :class:`pipeline.models.dwsnet.EquivariantLinear`: ``mode="hnp"`` permutes
the hidden neuron layers only (the DWSNet layer); ``mode="np"`` treats every neuron layer as
permutable (far fewer terms) and restores the input / output neurons' identity with learned
position codes, so the model is again equivariant to exactly the hidden permutations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import MAX_WIDTH, setting
from pipeline.models import DataShape
from pipeline.models.dwsnet import EquivariantLinear, InvariantHead, WeightSpaceEditHead, slot_key, slots, to_slots
from pipeline.weightspace.spec import ParamSpec, unflatten

# what the invariant head averages: every axis the trunk permutes (NP: input and output neurons
# too), or the hidden-neuron axes only, keeping input / output positions (the reference's HNP pool)
HEAD_POOLS = ("permuted", "hidden")


@dataclass(frozen=True)
class Settings:
    """``<section>.nfn`` of ``params.yaml``."""

    hidden: int = setting(32, gt=0, le=MAX_WIDTH)
    layers: int = setting(3, gt=0)
    mode: str = setting("np", one_of=("np", "hnp"))
    fourier_features: int = setting(0, ge=0)  # the reference code: 128 (as NFNEncoder: sin and cos each)
    fourier_scale: float = setting(3.0, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)
    io_scale: float = setting(0.1, gt=0)  # std of the initial NP position codes; the reference code: 1
    head_pool: str = setting("permuted", one_of=HEAD_POOLS)  # the reference code: hidden
    head_width: int = setting(0, ge=0, le=MAX_WIDTH)  # 0: 4 x hidden; the reference code: 1000


INPUT_KIND = "flat"
LABEL = "NFN"
REPORT_ORDER = 50


def variant(settings: dict) -> str:
    """The layer's symmetry, ``"np"`` or ``"hnp"``: the papers publish each separately."""
    return settings["mode"]


def variant_label(settings: dict) -> str:
    return settings["mode"].upper()


def build(s: Settings, shape: DataShape) -> NFN:
    """The NFN classifier / regressor of ``shape.spec``."""
    return NFN(
        shape.spec,
        shape.n_classes,
        hidden=s.hidden,
        layers=s.layers,
        mode=s.mode,
        fourier_features=s.fourier_features,
        fourier_scale=s.fourier_scale,
        dropout=s.dropout,
        io_scale=s.io_scale,
        head_pool=s.head_pool,
        head_width=s.head_width,
    )


def build_editor(s: Settings, shape: DataShape, init_scale: float) -> NFNEditor:
    """The NFN weight-space editor of ``shape.spec``."""
    return NFNEditor(
        shape.spec,
        hidden=s.hidden,
        layers=s.layers,
        mode=s.mode,
        fourier_features=s.fourier_features,
        fourier_scale=s.fourier_scale,
        init_scale=init_scale,
        io_scale=s.io_scale,
    )


class NFNEncoder(nn.Module):
    r"""The equivariant trunk of NFN: flat parameters -> per-slot feature map.

    .. math::
        x^0_A = \mathrm{Lift}_A(\mathrm{FF}(w_A)) + \mathrm{IO}_A,\qquad
        x^{t+1} = \mathrm{ReLU}(\mathrm{EqLin}_t(x^t))

    ``mode="hnp"``: :class:`EquivariantLinear` on the hidden-neuron symmetry (the DWSNet layer).
    ``mode="np"``: every neuron layer treated as permutable (only row / column / full means, far
    fewer terms), with learned position encodings :math:`\mathrm{IO}` over the input neurons
    (added along layer-0 axes) and output neurons (layer-``L`` axes) restoring their identity, so
    the trunk is again equivariant to exactly the hidden permutations. :math:`\mathrm{FF}`:
    optional Gaussian Fourier features of every scalar parameter (``fourier_features``
    frequencies, scale ``fourier_scale``); :math:`\mathrm{Lift}_A` a per-slot linear map to
    ``hidden`` channels; the position codes start as ``N(0, io_scale^2)``.

    Shapes: ``(B, P)`` -> ``{slot: (B, *sizes, hidden)}``. :attr:`permuted` holds the layers the
    equivariant layers treat as permutable (what an invariant pool must average).
    """

    def __init__(
        self,
        spec: ParamSpec,
        hidden: int = 32,
        layers: int = 3,
        mode: str = "np",
        fourier_features: int = 0,
        fourier_scale: float = 3.0,
        io_scale: float = 0.1,
    ):
        super().__init__()
        if mode not in ("np", "hnp"):
            raise ValueError(f"NFN mode must be 'np' or 'hnp', got {mode!r}")
        self.spec, self.mode = spec, mode
        L = spec.n_layers
        self.permuted = set(range(L + 1)) if mode == "np" else set(spec.hidden_layers)
        self.slot_list = slots(spec)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(max(fourier_features, 0), generator=g) * fourier_scale)
        per_scalar = 1 + 2 * fourier_features
        lift = {slot_key(s.name): nn.Linear(s.channels * per_scalar, hidden) for s in self.slot_list}
        self.lift = nn.ModuleDict(lift)
        self.io = nn.ParameterDict()
        if mode == "np":
            for l in (0, L):
                self.io[str(l)] = nn.Parameter(torch.randn(spec.layer_sizes[l], hidden) * io_scale)
        self.layers = nn.ModuleList(EquivariantLinear(spec, hidden, hidden, self.permuted) for _ in range(layers))

    def _features(self, x: Tensor) -> Tensor:
        if self.freqs.numel() == 0:
            return x
        arg = 2 * math.pi * x.unsqueeze(-1) * self.freqs  # (..., c, F)
        return torch.cat([x, torch.sin(arg).flatten(-2), torch.cos(arg).flatten(-2)], dim=-1)

    def forward(self, flat: Tensor) -> dict[str, Tensor]:
        raw = to_slots(unflatten(flat, self.spec), self.spec)
        xs = {}
        for s in self.slot_list:
            h = self.lift[slot_key(s.name)](self._features(raw[s.name]))
            for d, l in enumerate(s.layers):
                if str(l) in self.io:  # position encoding along that axis: (n_l, c) broadcast over the others
                    shape = [1] * (h.dim() - 1) + [h.shape[-1]]
                    shape[1 + d] = self.spec.layer_sizes[l]
                    h = h + self.io[str(l)].view(shape)
            xs[s.name] = h
        for layer in self.layers:
            xs = {k: torch.relu(v) for k, v in layer(xs).items()}
        return xs


class NFN(nn.Module):
    r"""Neural functional (Zhou et al., 2023): HNP or NP equivariant layers, invariant pool, MLP head.

    .. math::
        x^0_A = \mathrm{Lift}_A(\mathrm{FF}(w_A)) + \mathrm{IO}_A,\qquad
        x^{t+1} = \mathrm{ReLU}(\mathrm{EqLin}_t(x^t)),\qquad \hat y = \mathrm{MLP}(\mathrm{pool}(x^T))

    :class:`NFNEncoder` (``mode``, position codes, Fourier features), then :class:`InvariantHead`
    pooling the axes the encoder treats as permutable (``head_pool="permuted"``) or the hidden
    axes only (``"hidden"``, input / output positions kept: invariant to the hidden
    permutations either way).

    Args:
        spec: the weight space.  n_classes: outputs.
        hidden, layers, dropout: channels, equivariant layers, head dropout.
        mode, fourier_features, fourier_scale, io_scale: as :class:`NFNEncoder`.
        head_pool: ``"permuted"`` or ``"hidden"``.  head_width: the head MLP's width (0: ``4 hidden``).
    Shapes: ``(B, P)`` flattened parameters -> ``(B, n_classes)``.
    """

    input_kind = "flat"

    def __init__(
        self,
        spec: ParamSpec,
        n_classes: int,
        *,
        hidden: int = 32,
        layers: int = 3,
        mode: str = "np",
        fourier_features: int = 0,
        fourier_scale: float = 3.0,
        dropout: float = 0.0,
        io_scale: float = 0.1,
        head_pool: str = "permuted",
        head_width: int = 0,
    ):
        super().__init__()
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {HEAD_POOLS}, got {head_pool!r}")
        self.spec = spec
        self.encoder = NFNEncoder(spec, hidden, layers, mode, fourier_features, fourier_scale, io_scale)
        pooled = self.encoder.permuted if head_pool == "permuted" else set(spec.hidden_layers)
        self.head = InvariantHead(spec, hidden, n_classes, dropout, pooled, width=head_width)

    def forward(self, flat: Tensor) -> Tensor:
        return self.head(self.encoder(flat))


class NFNEditor(nn.Module):
    r"""NFN for weight-space editing: :class:`NFNEncoder`, then :class:`WeightSpaceEditHead`.

    .. math:: \theta' = \theta + \alpha\,\mathrm{vec}(U\,x^T(\theta))

    Args:
        spec: the weight space.  hidden, layers: channels, equivariant layers.
        mode, fourier_features, fourier_scale, io_scale: as :class:`NFNEncoder`.
        init_scale: initial residual scale :math:`\alpha_0`.
    Shapes: ``(B, P)`` flattened parameters -> edited ``(B, P)``, same layout.
    """

    input_kind = "flat"

    def __init__(
        self,
        spec: ParamSpec,
        *,
        hidden: int = 32,
        layers: int = 3,
        mode: str = "np",
        fourier_features: int = 0,
        fourier_scale: float = 3.0,
        init_scale: float = 1e-3,
        io_scale: float = 0.1,
    ):
        super().__init__()
        self.spec = spec
        self.encoder = NFNEncoder(spec, hidden, layers, mode, fourier_features, fourier_scale, io_scale)
        self.head = WeightSpaceEditHead(spec, hidden, init_scale)

    def forward(self, flat: Tensor) -> Tensor:
        return self.head(self.encoder(flat), flat)
