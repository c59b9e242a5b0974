r"""DWSNet (Navon et al., 2023): linear layers equivariant to the hidden-neuron permutations of a weight space.

Built from a :class:`~pipeline.weightspace.spec.ParamSpec` alone. Every parameter tensor is a
*slot*: its neuron axes (each tagged with a neuron layer) plus a channel axis, with the
spec's feature axes (a KAN's spline coefficients, a kernel's offsets) folded into the
channels. Hidden layers ``1 .. L-1`` are permuted; the input layer ``0`` and output layer
``L`` are not.

The equivariant linear maps from slot ``A`` to slot ``B`` are spanned by one term per subset
``S`` of the hidden layers that index both ``A`` and ``B``: each hidden axis of ``A`` not in ``S``
is averaged out, each hidden axis of ``B`` not in ``S`` is broadcast, the axes in ``S`` are
kept (identity), and the fixed (input / output layer) axes of ``A`` and ``B`` are joined by a
dense learned map. For a weight matrix onto itself with two hidden axes this gives the four
terms identity / row-pool / column-pool / full-pool; between neighbouring layers the shared
neuron axis couples; between non-neighbours only fully pooled terms remain, as in the
paper's characterization. With ``x_A`` of shape ``(B, *axes_A, c)``:

.. math::
    y_B = \frac{1}{\sqrt{T_B}}\sum_{A}\sum_{S} \mathrm{bcast}_{B \setminus S}\Big(
        \Theta_{A,B,S} \cdot \mathrm{mean}_{\mathrm{hid}(A) \setminus S}\, x_A\Big) + \beta_B

where :math:`\Theta_{A,B,S}` has shape ``(*fixed_A, *fixed_B, c_in, c_out)``, :math:`T_B` counts
the terms that reach ``B`` (normalizing by :math:`\sqrt{T_B}`, with He-initialized :math:`\Theta`,
keeps the variance of every entry through a ReLU stack at initialization) and
:math:`\beta_B` is a bias over ``B``'s fixed axes (constant along hidden axes, hence equivariant).

Models share an equivariant trunk (:class:`DWSEncoder`, :class:`NFNEncoder`: flat parameters ->
per-slot feature map) and differ in the head: :class:`InvariantHead` for classification /
regression (:class:`DWSNet`, :class:`NFN`), :class:`WeightSpaceEditHead` for editing, which
returns edited parameters in the input's flat layout (:class:`DWSNetEditor`, :class:`NFNEditor`).
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import MAX_WIDTH, setting
from pipeline.models import DataShape
from pipeline.weightspace.spec import Params, ParamSpec, flatten, unflatten

REDUCTIONS = ("mean", "max")  # how pooled terms and the invariant pool reduce a permuted axis
NORMS = ("none", "batch")


def reduce_axes(x: Tensor, dims: tuple[int, ...], how: str) -> Tensor:
    """Mean or max of ``x`` over ``dims``: both symmetric in the entries, so equivariance holds."""
    return x.mean(dim=dims) if how == "mean" else x.amax(dim=dims)


@dataclass(frozen=True)
class Slot:
    """One parameter tensor as a feature tensor ``(B, *sizes, channels)`` over its neuron axes."""

    name: str
    layers: tuple[int, ...]  # neuron layer of each neuron axis, in storage order
    sizes: tuple[int, ...]
    channels: int  # product of the spec tensor's feature axes (1 for an MLP)


def slots(spec: ParamSpec) -> tuple[Slot, ...]:
    """Every tensor of ``spec`` as a :class:`Slot`."""
    out = []
    for t in spec.tensors:
        neuron = [(a, l) for a, l in enumerate(t.axes) if l is not None]
        feat = [t.shape[a] for a, l in enumerate(t.axes) if l is None]
        out.append(Slot(t.name, tuple(l for _, l in neuron), tuple(t.shape[a] for a, _ in neuron), math.prod(feat)))
    return tuple(out)


def to_slots(params: Params, spec: ParamSpec) -> dict[str, Tensor]:
    """Zoo batch -> ``{name: (B, *neuron axes, channels)}`` (feature axes moved last, flattened)."""
    out = {}
    for t in spec.tensors:
        neuron = [a + 1 for a, l in enumerate(t.axes) if l is not None]
        feat = [a + 1 for a, l in enumerate(t.axes) if l is None]
        v = params[t.name].permute(0, *neuron, *feat)
        out[t.name] = v.reshape(*v.shape[: 1 + len(neuron)], -1)
    return out


def from_slots(xs: dict[str, Tensor], spec: ParamSpec) -> Params:
    """Inverse of :func:`to_slots`: ``{name: (B, *neuron axes, channels)}`` -> zoo batch (spec axis order)."""
    out: Params = {}
    for t in spec.tensors:
        neuron = [a for a, l in enumerate(t.axes) if l is not None]
        feat = [a for a, l in enumerate(t.axes) if l is None]
        order = neuron + feat  # storage axis at each position of the slot layout
        v = xs[t.name].reshape(xs[t.name].shape[0], *(t.shape[a] for a in order))
        out[t.name] = v.permute(0, *(1 + order.index(a) for a in range(len(t.axes))))
    return out


@dataclass(frozen=True)
class _Term:
    src: int  # index of the input slot
    dst: int  # index of the output slot
    keep: tuple[int, ...]  # hidden layers kept as identity (shared by src and dst)
    equation: str  # einsum: pooled input, Θ -> (B, kept..., fixed_dst..., c_out)
    pool_dims: tuple[int, ...]  # dims of the input averaged out (hidden, not kept)
    theta_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Group:
    dst: int  # output slot
    keep: tuple[int, ...]  # hidden layers kept by every term of the group
    kept: tuple[int, ...]  # their sizes
    fixed: tuple[int, ...]  # sizes of the output slot's fixed axes
    reads: tuple[tuple[int, tuple[int, ...], int], ...]  # (term, pooled-input axis order, fixed_A count)


class SetAttention(nn.Module):
    r"""A set-attention block (the DWSNets reference's ``SAB``): a permutation-equivariant, non-linear
    map of a set of tokens.

    .. math::
        Q, K, V = W_q X, W_k X, W_v X,\qquad
        O = Q + \big\Vert_h \mathrm{softmax}\big(Q_h K_h^\top / \sqrt{d}\big) V_h,\qquad
        Y = O + \mathrm{ReLU}(W_o O)

    Shapes: ``(B, n, d_in)`` -> ``(B, n, d)``; ``heads`` must divide ``d``.
    """

    def __init__(self, d_in: int, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} must be a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_in, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        B, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        split = (B, n, self.heads, q.shape[-1] // self.heads)
        att = torch.einsum("bihd,bjhd->bhij", q.view(split), k.view(split)) / math.sqrt(q.shape[-1])
        o = q + torch.einsum("bhij,bjhd->bihd", torch.softmax(att, dim=-1), v.view(split)).reshape(B, n, -1)
        return o + torch.relu(self.out(o))


@dataclass(frozen=True)
class _SetBlock:
    src: int
    dst: int
    layer: int  # the one hidden layer the two slots share: the set
    pool_dims: tuple[int, ...]  # the input's other hidden axes, reduced
    set_axis: int  # the set's axis in the reduced input (after the batch axis)
    group: _Group  # where the output goes: the set axis kept, other hidden axes broadcast


class EquivariantLinear(nn.Module):
    """The DWSNet linear layer on a spec's weight space: every block, every pooling term.

    Args:
        spec: the weight space.
        c_in: input channels, an int for every slot or ``None`` for the spec's own feature
            widths (the first layer).
        c_out: output channels of every slot.
        permuted: the neuron layers treated as permutable; default the spec's hidden layers
            (DWSNet, NFN's HNP). All layers ``0..L`` gives NFN's cheaper NP layer, whose
            input/output identity a position encoding restores (:class:`NFN`).
        reduction: ``"mean"`` (the module equation) or ``"max"`` over the pooled axes.
        set_heads: ``> 0`` maps every block whose two slots share exactly one hidden layer with a
            :class:`SetAttention` block over that layer's neurons (that many heads) instead of its
            two linear terms (identity and pooled: a DeepSets map), as the DWSNets reference code
            does (``set_layer: sab``). A token is the input's entries at one neuron (its other
            hidden axes reduced, fixed axes and channels flattened); the output is broadcast over
            the output slot's other hidden axes. The layer is then no longer linear.
    Shapes: ``{slot: (B, *sizes, c_in)}`` -> ``{slot: (B, *sizes, c_out)}``.
    """

    def __init__(
        self,
        spec: ParamSpec,
        c_in: int | None,
        c_out: int,
        permuted: set[int] | None = None,
        reduction: str = "mean",
        set_heads: int = 0,
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.slots = slots(spec)
        hidden = set(spec.hidden_layers) if permuted is None else set(permuted)
        self.terms: list[_Term] = []
        self.thetas = nn.ParameterList()
        n_terms = [0] * len(self.slots)
        set_pairs = []
        for i, a in enumerate(self.slots):
            for j, b in enumerate(self.slots):
                shared = sorted(set(a.layers) & set(b.layers) & hidden)
                if set_heads > 0 and len(shared) == 1 and a.layers.count(shared[0]) == b.layers.count(shared[0]) == 1:
                    set_pairs.append((i, j, shared[0]))
                    n_terms[j] += 1
                    continue
                for r in range(len(shared) + 1):
                    for keep in itertools.combinations(shared, r):
                        self.terms.append(self._term(i, j, a, b, keep, hidden, c_in, c_out))
                        n_terms[j] += 1
        # He-uniform Θ (variance 2 / fan_in) and a 1 / sqrt(T_B) sum keep the per-entry variance of
        # a ReLU stack at init (a 1 / T_B mean of 1 / sqrt(fan_in) terms shrank it ~60x per layer,
        # so a 4-layer DWSNet saw nearly the same features for every net and could not train)
        for term in self.terms:
            theta = torch.empty(term.theta_shape)
            bound = math.sqrt(6.0 / math.prod(term.theta_shape[:-1]))
            nn.init.uniform_(theta, -bound, bound)
            self.thetas.append(nn.Parameter(theta))
        self.scale = [1.0 / math.sqrt(n) for n in n_terms]
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(*[s for s, l in zip(b.sizes, b.layers, strict=True) if l not in hidden], c_out))
            for b in self.slots
        )
        self.hidden = hidden
        self._group_list = self._groups()
        self.set_blocks = [self._set_block(i, j, layer) for i, j, layer in set_pairs]
        self.sets = nn.ModuleList(
            SetAttention(
                (self.slots[blk.src].channels if c_in is None else c_in) * self._n_fixed(self.slots[blk.src]),
                c_out * self._n_fixed(self.slots[blk.dst]),
                set_heads,
            )
            for blk in self.set_blocks
        )

    def _n_fixed(self, s: Slot) -> int:
        """Product of the slot's fixed (not permuted) axis sizes."""
        return math.prod(n for n, l in zip(s.sizes, s.layers, strict=True) if l not in self.hidden)

    def _set_block(self, i: int, j: int, layer: int) -> _SetBlock:
        a, b = self.slots[i], self.slots[j]
        pool = tuple(d + 1 for d, l in enumerate(a.layers) if l in self.hidden and l != layer)
        fixed_b = tuple(n for n, l in zip(b.sizes, b.layers, strict=True) if l not in self.hidden)
        group = _Group(j, (layer,), (b.sizes[b.layers.index(layer)],), fixed_b, ())
        rest = [l for l in a.layers if not (l in self.hidden and l != layer)]
        return _SetBlock(i, j, layer, pool, 1 + rest.index(layer), group)

    @staticmethod
    def _term(i, j, a: Slot, b: Slot, keep, hidden, c_in, c_out) -> _Term:
        letters = iter(string.ascii_letters)
        ci = a.channels if c_in is None else c_in
        batch, cin, cout = next(letters), next(letters), next(letters)
        kept = {l: next(letters) for l in keep}
        fixed_a = [(d, next(letters)) for d, l in enumerate(a.layers) if l not in hidden]
        fixed_b = [(d, next(letters)) for d, l in enumerate(b.layers) if l not in hidden]
        pool = tuple(d + 1 for d, l in enumerate(a.layers) if l in hidden and l not in keep)
        # pooled input: batch, then a's remaining axes in order (kept hidden or fixed), channels
        x_sub = (
            batch
            + "".join(
                kept[l] if l in kept else dict(fixed_a)[d]
                for d, l in enumerate(a.layers)
                if not (l in hidden and l not in keep)
            )
            + cin
        )
        theta_sub = "".join(c for _, c in fixed_a) + "".join(c for _, c in fixed_b) + cin + cout
        out_sub = batch + "".join(kept[l] for l in keep) + "".join(c for _, c in fixed_b) + cout
        shape = tuple(a.sizes[d] for d, _ in fixed_a) + tuple(b.sizes[d] for d, _ in fixed_b) + (ci, c_out)
        return _Term(i, j, tuple(keep), f"{x_sub},{theta_sub}->{out_sub}", pool, shape)

    def _groups(self) -> list[_Group]:
        """The terms grouped by (output slot, kept layers): one matmul per group (see ``forward``)."""
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for k, term in enumerate(self.terms):
            groups.setdefault((term.dst, term.keep), []).append(k)
        out = []
        for (dst, keep), members in groups.items():
            b = self.slots[dst]
            fixed_b = [s for s, l in zip(b.sizes, b.layers, strict=True) if l not in self.hidden]
            kept = [b.sizes[b.layers.index(l)] for l in keep]
            reads = []
            for k in members:
                term, a = self.terms[k], self.slots[self.terms[k].src]
                rest = [(d, l) for d, l in enumerate(a.layers) if not (l in self.hidden and l not in keep)]
                # pooled input axes after the batch: a's remaining axes in a's order; kept ones first, in keep order
                kept_pos = [1 + next(i for i, (_, l) in enumerate(rest) if l == kl) for kl in keep]
                fixed_pos = [1 + i for i, (_, l) in enumerate(rest) if l not in self.hidden]
                reads.append((k, (0, *kept_pos, *fixed_pos, 1 + len(rest)), len(fixed_pos)))
            out.append(_Group(dst, keep, tuple(kept), tuple(fixed_b), tuple(reads)))
        return out

    def _pooled(self, x: Tensor, dims: tuple[int, ...], cache: dict, src: int) -> Tensor:
        """``x`` reduced over ``dims`` (kept as size-1 axes), each reduction computed once per
        forward: a multi-axis pool reduces the cached pool over its other axes (mean of means and
        max of maxima over equal-sized axes are the full mean / max)."""
        if not dims:
            return x
        key = (src, dims)
        if key not in cache:
            inner = self._pooled(x, dims[1:], cache, src)
            d = dims[0]
            cache[key] = inner.mean(d, keepdim=True) if self.reduction == "mean" else inner.amax(d, keepdim=True)
        return cache[key]

    def forward(self, xs: dict[str, Tensor]) -> dict[str, Tensor]:
        r"""Every term of the module equation, computed per group of terms that share an output
        slot and kept layers: their pooled inputs, arranged as ``(B, kept..., fixed_A... x c_in)``,
        are concatenated along the last axis and multiplied by the stacked :math:`\Theta` s in one
        matmul; the group's ``(B, kept..., fixed_B..., c_out)`` result broadcasts over the
        pooled-out axes of ``B`` when the groups are summed."""
        inputs = [xs[s.name] for s in self.slots]
        batch = inputs[0].shape[0]
        cache: dict = {}
        outs: list[Tensor | None] = [None] * len(self.slots)
        for g in self._group_list:
            feats, thetas = [], []
            for k, order, n_fixed in g.reads:
                term, theta = self.terms[k], self.thetas[k]
                x = self._pooled(inputs[term.src], term.pool_dims, cache, term.src)
                x = x.squeeze(term.pool_dims) if term.pool_dims else x
                feats.append(x.permute(order).reshape(batch, math.prod(g.kept), -1))
                # Θ (fixed_A..., fixed_B..., c_in, c_out) -> (fixed_A... x c_in, fixed_B... x c_out)
                perm = (*range(n_fixed), theta.dim() - 2, *range(n_fixed, theta.dim() - 2), theta.dim() - 1)
                thetas.append(theta.permute(perm).reshape(feats[-1].shape[-1], -1))
            x = feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)
            w = thetas[0] if len(thetas) == 1 else torch.cat(thetas, dim=0)
            y = self._place((x @ w).reshape(batch, *g.kept, *g.fixed, -1), g)
            outs[g.dst] = y if outs[g.dst] is None else outs[g.dst] + y
        for blk, sab in zip(self.set_blocks, self.sets, strict=True):
            x = self._pooled(inputs[blk.src], blk.pool_dims, cache, blk.src)
            x = x.squeeze(blk.pool_dims) if blk.pool_dims else x
            tokens = x.movedim(blk.set_axis, 1).reshape(batch, x.shape[blk.set_axis], -1)
            y = sab(tokens).reshape(batch, *blk.group.kept, *blk.group.fixed, -1)
            y = self._place(y, blk.group)
            outs[blk.dst] = y if outs[blk.dst] is None else outs[blk.dst] + y
        result = {}
        for j, b in enumerate(self.slots):
            bias_shape = (1,) + tuple(1 if l in self.hidden else s for s, l in zip(b.sizes, b.layers, strict=True))
            bias = self.biases[j].reshape(*bias_shape, -1)
            out = outs[j] * self.scale[j] + bias
            result[b.name] = out.expand(batch, *b.sizes, out.shape[-1])
        return result

    def _place(self, y: Tensor, g: _Group) -> Tensor:
        """``(B, kept..., fixed_dst..., c)`` -> ``(B, *dst axes, c)`` with size 1 on the pooled-out
        hidden axes (broadcast by the sum in ``forward``)."""
        b = self.slots[g.dst]
        fixed = [d for d, l in enumerate(b.layers) if l not in self.hidden]
        src_pos = {l: 1 + k for k, l in enumerate(g.keep)}
        src_pos |= {("fixed", d): 1 + len(g.keep) + k for k, d in enumerate(fixed)}
        perm, shape = [0], [y.shape[0]]
        for d, l in enumerate(b.layers):
            key = l if l in g.keep else ("fixed", d) if l not in self.hidden else None
            if key is not None:
                perm.append(src_pos[key])
            shape.append(1 if key is None else b.sizes[d])
        perm.append(y.dim() - 1)
        return y.permute(*perm).reshape(*shape, y.shape[-1])


class InvariantPool(nn.Module):
    """Mean (or max: ``reduction``) over every permuted (default: hidden) axis of every slot,
    fixed axes kept.

    Shapes: ``{slot: (B, *sizes, c)}`` -> ``(B, D)``.
    """

    def __init__(self, spec: ParamSpec, channels: int, permuted: set[int] | None = None, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction
        self.slots = slots(spec)
        hidden = set(spec.hidden_layers) if permuted is None else set(permuted)
        self.dims = [tuple(d + 1 for d, l in enumerate(s.layers) if l in hidden) for s in self.slots]
        self.out_dim = sum(
            channels * math.prod(n for n, l in zip(s.sizes, s.layers, strict=True) if l not in hidden)
            for s in self.slots
        )

    def forward(self, xs: dict[str, Tensor]) -> Tensor:
        pooled = [
            reduce_axes(xs[s.name], d, self.reduction) if d else xs[s.name]
            for s, d in zip(self.slots, self.dims, strict=True)
        ]
        return torch.cat([p.flatten(1) for p in pooled], dim=1)


class InvariantHead(nn.Module):
    r"""Invariant readout: :class:`InvariantPool`, then a two-layer MLP.

    .. math:: \hat y = W_2\,\mathrm{Dropout}(\mathrm{ReLU}(W_1\,\mathrm{pool}(x) + c_1)) + c_2

    Args:
        spec: the weight space.  channels: ``c`` of the feature map.  n_outputs: logits.
        dropout: between the two layers.  permuted: the layers pooled (default: hidden).
        reduction: the pool's, ``"mean"`` or ``"max"``.  width: the MLP's hidden width (0: ``4 c``).
    Shapes: ``{slot: (B, *sizes, c)}`` -> ``(B, n_outputs)``.
    """

    def __init__(
        self,
        spec: ParamSpec,
        channels: int,
        n_outputs: int,
        dropout: float = 0.0,
        permuted: set[int] | None = None,
        reduction: str = "mean",
        width: int = 0,
    ):
        super().__init__()
        self.pool = InvariantPool(spec, channels, permuted, reduction)
        width = width or channels * 4
        self.mlp = nn.Sequential(
            nn.Linear(self.pool.out_dim, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, n_outputs),
        )

    def forward(self, xs: dict[str, Tensor]) -> Tensor:
        return self.mlp(self.pool(xs))


class WeightSpaceEditHead(nn.Module):
    r"""Equivariant editing readout: a residual update of every parameter from a feature map.

    For every slot :math:`A` (one parameter tensor) with features :math:`x_A` of shape
    ``(B, *sizes_A, c)`` a per-slot linear map to the slot's own channel count (1 for an MLP)
    gives the update, applied at every neuron position alike (so it commutes with any
    permutation of the neuron axes); the update is added to the input parameters with one
    learned scale :math:`\alpha` that starts small, so an untrained editor is close to identity:

    .. math::
        \Delta_A = x_A U_A + d_A,\qquad \theta' = \theta + \alpha\,\mathrm{vec}(\Delta),
        \qquad \alpha_0 = \texttt{init\_scale}

    with :math:`\mathrm{vec}` the :func:`~pipeline.weightspace.spec.flatten` order.

    Args:
        spec: the weight space.  channels: ``c``.  init_scale: :math:`\alpha_0`.
    Shapes: features ``{slot: (B, *sizes, c)}`` and parameters ``(B, P)`` -> edited ``(B, P)``.
    """

    def __init__(self, spec: ParamSpec, channels: int, init_scale: float = 1e-3):
        super().__init__()
        self.spec = spec
        self.out = nn.ModuleDict({slot_key(s.name): nn.Linear(channels, s.channels) for s in slots(spec)})
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def delta(self, xs: dict[str, Tensor]) -> Tensor:
        r"""The update :math:`\mathrm{vec}(\Delta)` before scaling: ``(B, P)``."""
        out = {name: self.out[slot_key(name)](x) for name, x in xs.items()}
        return flatten(from_slots(out, self.spec), self.spec)

    def forward(self, xs: dict[str, Tensor], flat: Tensor) -> Tensor:
        return flat + self.scale * self.delta(xs)


def slot_key(name: str) -> str:
    """A tensor name as a module key (``nn.ModuleDict`` keys may not contain dots)."""
    return name.replace(".", "_")


class SlotBatchNorm(nn.Module):
    r"""Batch normalization of every slot's channels, statistics over the batch and all positions.

    .. math:: \hat x_{A,c} = \gamma_{A,c}\,\frac{x_{A,c} - \mu_{A,c}}{\sqrt{\sigma^2_{A,c} + \epsilon}} + \beta_{A,c}

    :math:`\mu, \sigma` pool every neuron position of slot ``A`` alike, so permuting neurons
    permutes the output (the DWSNets reference normalizes its layers this way).

    Shapes: ``{slot: (B, *sizes, c)}`` -> same.
    """

    def __init__(self, spec: ParamSpec, channels: int):
        super().__init__()
        self.norms = nn.ModuleDict({slot_key(s.name): nn.BatchNorm1d(channels) for s in slots(spec)})

    def forward(self, xs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.norms[slot_key(k)](v.reshape(-1, v.shape[-1])).view_as(v) for k, v in xs.items()}


class DWSEncoder(nn.Module):
    r"""The equivariant trunk of DWSNet: flat parameters -> per-slot feature map.

    .. math::
        x^0 = \mathrm{slots}(\theta),\qquad
        x^{t+1} = \mathrm{ReLU}(\mathrm{Norm}_t(\mathrm{EqLin}_t(x^t))),\ t < T

    with :class:`EquivariantLinear` layers (the first reads the spec's raw channels; pooled terms
    reduce by ``reduction``; ``set_heads > 0``: set-attention blocks, see :class:`EquivariantLinear`)
    and ``Norm`` the identity or :class:`SlotBatchNorm` (``norm="batch"``).

    Shapes: ``(B, P)`` -> ``{slot: (B, *sizes, hidden)}``; equivariant to hidden permutations.
    """

    def __init__(
        self,
        spec: ParamSpec,
        hidden: int = 32,
        layers: int = 4,
        reduction: str = "mean",
        norm: str = "none",
        set_heads: int = 0,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.spec = spec
        self.permuted = set(spec.hidden_layers)
        self.layers = nn.ModuleList(
            EquivariantLinear(spec, None if t == 0 else hidden, hidden, reduction=reduction, set_heads=set_heads)
            for t in range(layers)
        )
        self.norms = nn.ModuleList(SlotBatchNorm(spec, hidden) for _ in range(layers) if norm == "batch")

    def forward(self, flat: Tensor) -> dict[str, Tensor]:
        xs = to_slots(unflatten(flat, self.spec), self.spec)
        for t, layer in enumerate(self.layers):
            xs = layer(xs)
            if self.norms:
                xs = self.norms[t](xs)
            xs = {k: torch.relu(v) for k, v in xs.items()}
        return xs


class DWSNet(nn.Module):
    r"""DWSNet classifier / regressor of a weight space.

    .. math::
        x^{t+1} = \mathrm{ReLU}(\mathrm{EqLin}_t(x^t))\ (t < T),\qquad
        \hat y = \mathrm{MLP}(\mathrm{pool}(x^T))

    :class:`DWSEncoder`, then :class:`InvariantHead` (means, or maxima, over hidden axes,
    input/output axes kept, two-layer MLP). Invariant to hidden-neuron permutations for any depth
    ``L >= 2``.

    Args:
        spec: the weight space.  n_classes: outputs.
        hidden, layers, dropout: channels, number of equivariant layers, head dropout.
        reduction, norm, set_heads: as :class:`DWSEncoder` (the head pools by ``reduction`` too).
        head_width: the head MLP's width (0: ``4 hidden``).
    Shapes: ``(B, P)`` flattened parameters (:func:`pipeline.weightspace.spec.flatten` order)
    -> ``(B, n_classes)``.
    """

    input_kind = "flat"

    def __init__(
        self,
        spec: ParamSpec,
        n_classes: int,
        *,
        hidden: int = 32,
        layers: int = 4,
        dropout: float = 0.0,
        reduction: str = "mean",
        norm: str = "none",
        head_width: int = 0,
        set_heads: int = 0,
    ):
        super().__init__()
        self.spec = spec
        self.encoder = DWSEncoder(spec, hidden, layers, reduction, norm, set_heads)
        self.head = InvariantHead(spec, hidden, n_classes, dropout, self.encoder.permuted, reduction, head_width)

    def forward(self, flat: Tensor) -> Tensor:
        return self.head(self.encoder(flat))


class DWSNetEditor(nn.Module):
    r"""DWSNet for weight-space editing: :class:`DWSEncoder`, then :class:`WeightSpaceEditHead`.

    .. math:: \theta' = \theta + \alpha\,\mathrm{vec}(U\,x^T(\theta))

    Equivariant: permuting the hidden neurons of the input permutes the edited parameters alike.

    Args:
        spec: the weight space.  hidden, layers: channels, equivariant layers.
        init_scale: initial residual scale :math:`\alpha_0`.  reduction, norm, set_heads: as :class:`DWSEncoder`.
    Shapes: ``(B, P)`` flattened parameters -> edited ``(B, P)``, same layout.
    """

    input_kind = "flat"

    def __init__(
        self,
        spec: ParamSpec,
        *,
        hidden: int = 32,
        layers: int = 4,
        init_scale: float = 1e-3,
        reduction: str = "mean",
        norm: str = "none",
        set_heads: int = 0,
    ):
        super().__init__()
        self.spec = spec
        self.encoder = DWSEncoder(spec, hidden, layers, reduction, norm, set_heads)
        self.head = WeightSpaceEditHead(spec, hidden, init_scale)

    def forward(self, flat: Tensor) -> Tensor:
        return self.head(self.encoder(flat), flat)


@dataclass(frozen=True)
class Settings:
    """``<section>.dwsnet`` of ``params.yaml``."""

    hidden: int = setting(32, gt=0, le=MAX_WIDTH)
    layers: int = setting(4, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)
    reduction: str = setting("mean", one_of=REDUCTIONS)  # the reference code: max
    norm: str = setting("none", one_of=NORMS)  # the reference code: batch
    head_width: int = setting(0, ge=0, le=MAX_WIDTH)  # 0: 4 x hidden
    set_heads: int = setting(0, ge=0)  # set-attention blocks (0: linear DeepSets terms); the reference code: 8

    def check(self) -> list[tuple[str, str]]:
        """Each set-attention head takes ``hidden / set_heads`` channels."""
        if self.set_heads and self.hidden % self.set_heads:
            return [("set_heads", f"{self.set_heads} must divide hidden ({self.hidden})")]
        return []


INPUT_KIND = "flat"
LABEL = "DWSNet"
REPORT_ORDER = 40


def build(s: Settings, shape: DataShape) -> DWSNet:
    """The DWSNet classifier / regressor of ``shape.spec``."""
    return DWSNet(
        shape.spec,
        shape.n_classes,
        hidden=s.hidden,
        layers=s.layers,
        dropout=s.dropout,
        reduction=s.reduction,
        norm=s.norm,
        head_width=s.head_width,
        set_heads=s.set_heads,
    )


def build_editor(s: Settings, shape: DataShape, init_scale: float) -> DWSNetEditor:
    """The DWSNet weight-space editor of ``shape.spec``."""
    return DWSNetEditor(
        shape.spec,
        hidden=s.hidden,
        layers=s.layers,
        init_scale=init_scale,
        reduction=s.reduction,
        norm=s.norm,
        set_heads=s.set_heads,
    )
