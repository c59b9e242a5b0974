r"""StatNN (Unterthiner et al., 2020): per-tensor statistics of the weights, then an MLP.

For every parameter tensor :math:`T` of the spec (each layer's weights and biases; a KAN's
coefficients and scales):

.. math::
    s(T) = [\mathrm{mean}, \mathrm{var}, q_0, q_{25}, q_{50}, q_{75}, q_{100}](T),\qquad
    \hat y = \mathrm{MLP}([s(T_1) \Vert \dots \Vert s(T_K)])

Every statistic is a symmetric function of the tensor's entries, so the model is invariant to
any permutation of neurons (hidden or not) by construction: the strong baseline for
generalization prediction, blind to how weights are wired.

On a zoo of several architectures (no single spec: the heterogeneous CNN zoo) the same
statistics are taken per *layer slot* of each neural graph (:class:`GraphStatNN`): slot ``l``
holds the statistics of layer ``l``'s edge features (kernel entries; the zero padding of a
kernel smaller than the graph's slot is left out) and of its output nodes' biases, the last
layer (the head) always in the last slot; absent slots are zeros and a 0/1 flag per slot says
which are present. Residual edges (constants) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import MAX_WIDTH, setting
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

    def __init__(self, spec: ParamSpec, n_classes: int, *, hidden: int = 256, layers: int = 3, dropout: float = 0.0):
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


def segment_statistics(values: Tensor, group: Tensor, n_groups: int, quantiles: Tensor) -> Tensor:
    """Statistics of ragged groups: ``values`` ``(M,)`` with ``group`` ids ``(M,)`` in
    ``[0, n_groups)`` -> ``(n_groups, 7)`` [mean, variance, quantiles] per group, as
    :func:`tensor_statistics` computes them for one row (linear interpolation between order
    statistics); an empty group gives zeros. Sorting by value then (stably) by group puts every
    group's values in order in one contiguous run, so no loop over groups is needed, and every
    shape follows from the inputs' (nothing is read back from the device)."""
    by_value = torch.argsort(values)
    order = by_value[torch.argsort(group[by_value], stable=True)]
    v = values[order]
    counts = torch.zeros(n_groups, dtype=torch.long, device=group.device).index_add_(0, group, torch.ones_like(group))
    starts = torch.cumsum(counts, 0) - counts
    n = counts.to(values.dtype)
    total = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, group, values)
    total_sq = torch.zeros_like(total).index_add_(0, group, values.square())
    mean = total / n.clamp_min(1)
    var = (total_sq / n.clamp_min(1) - mean.square()).clamp_min(0)
    pos = quantiles.to(values.dtype).unsqueeze(0) * (n - 1).clamp_min(0).unsqueeze(1)  # (S, Q)
    lo, frac = pos.floor(), pos - pos.floor()
    last = (starts + counts - 1).clamp_min(0).unsqueeze(1)
    i_lo = (starts.unsqueeze(1) + lo.long()).clamp(max=last)
    i_hi = (i_lo + 1).clamp(max=last)
    vpad = torch.cat([v, v.new_zeros(1)])  # a valid index when every group is empty
    q = vpad[i_lo] * (1 - frac) + vpad[i_hi] * frac
    out = torch.cat([mean.unsqueeze(1), var.unsqueeze(1), q], dim=1)
    return torch.where((counts > 0).unsqueeze(1), out, torch.zeros_like(out))


class GraphStatNN(nn.Module):
    """StatNN on neural graphs of any architecture. Shapes: a batch of ``B`` graphs ->
    ``(B, n_classes)``.

    Features per graph: for each of ``n_slots`` layer slots, ``[s(W_l), s(b_l)]`` (7 + 7
    statistics) and a presence flag; the last parameter layer of every graph fills the last
    slot, layer ``l < L - 1`` slot ``l``. Invariant to any permutation of a graph's nodes (the
    statistics are symmetric in their entries).

    Args:
        n_slots: layer slots (the deepest graph's number of parameter layers).
        n_classes, hidden, layers, dropout: as :class:`StatNN`.
    """

    input_kind = "graph"

    def __init__(self, n_slots: int, n_classes: int, *, hidden: int = 256, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.n_slots = n_slots
        self.register_buffer("quantiles", torch.tensor(QUANTILES), persistent=False)
        width = (2 * N_STATS + 1) * n_slots
        self.norm = nn.BatchNorm1d(width, affine=False)
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        mods.append(nn.Linear(width, n_classes))
        self.mlp = nn.Sequential(*mods)

    def features(self, batch) -> Tensor:
        """``(B, (2 * 7 + 1) * n_slots)`` per-slot statistics of a graph batch.

        Every value goes to a group ``graph * n_slots + slot``; those no slot takes (residual
        edges, the zero padding of a kernel smaller than the slot, the input nodes' empty biases)
        go to one extra group that is dropped, so no boolean mask sizes a tensor and nothing is
        read back from the device.
        """
        S = self.n_slots
        node_graph = batch.batch
        B = int(batch.num_graphs)
        rest = B * S  # the dropped group
        n_layers = torch.zeros(B, dtype=torch.long, device=node_graph.device).scatter_reduce_(
            0, node_graph, batch.node_layer, "amax"
        )  # L per graph: its output nodes' layer
        edge_graph = node_graph[batch.edge_index[0]]
        L_e = n_layers[edge_graph]

        def group(graph: Tensor, layer: Tensor, L: Tensor, keep: Tensor) -> Tensor:
            """Parameter layer -> ``graph * S + slot`` (the head in the last slot), else ``rest``."""
            slot = torch.where(layer == L - 1, torch.full_like(layer, S - 1), layer)
            return torch.where(keep, graph * S + slot, rest)

        vals = batch.edge_attr  # (E, D): a kernel's entries, zero-padded to the slot
        keep = (batch.edge_layer < L_e).unsqueeze(1) & (vals != 0)  # residual edges carry the layer id L
        g_w = group(edge_graph.unsqueeze(1), batch.edge_layer.unsqueeze(1), L_e.unsqueeze(1), keep)
        w_stats = segment_statistics(vals.flatten(), g_w.flatten(), rest + 1, self.quantiles)[:rest]
        g_b = group(node_graph, batch.node_layer - 1, n_layers[node_graph], batch.node_layer > 0)
        b_stats = segment_statistics(batch.x[:, 0], g_b, rest + 1, self.quantiles)[:rest]
        present = torch.zeros(rest + 1, dtype=vals.dtype, device=vals.device).index_add_(
            0, g_b, torch.ones_like(g_b, dtype=vals.dtype)
        )
        present = present[:rest].clamp(max=1).unsqueeze(1)
        return torch.cat([w_stats, b_stats, present], dim=1).view(B, -1)

    def forward(self, batch) -> Tensor:
        return self.mlp(self.norm(self.features(batch)))


@dataclass(frozen=True)
class Settings:
    """``<section>.statnn`` of ``params.yaml``."""

    hidden: int = setting(256, gt=0, le=MAX_WIDTH)
    layers: int = setting(3, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)


INPUT_KIND = "flat"
LABEL = "StatNN (per-tensor statistics)"
REPORT_ORDER = 20  # a baseline


ANY_ARCHITECTURE = True  # reads a zoo of several architectures (as GraphStatNN)


def build(s: Settings, shape: DataShape) -> StatNN | GraphStatNN:
    """StatNN on the per-tensor statistics of ``shape.spec``; on a zoo of several architectures
    (no template), :class:`GraphStatNN` on per-layer statistics of the graphs."""
    if shape.template is None:
        return GraphStatNN(shape.n_layers, shape.n_classes, hidden=s.hidden, layers=s.layers, dropout=s.dropout)
    return StatNN(shape.spec, shape.n_classes, hidden=s.hidden, layers=s.layers, dropout=s.dropout)
