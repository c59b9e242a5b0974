"""Building blocks shared by metanetworks: Fourier features, fast neighbourhood aggregation, graph editing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from pipeline.graphs.neural_graph import GraphTemplate, features_to_params
from pipeline.weightspace.spec import flatten


class FourierFeatures(nn.Module):
    r"""Random Fourier features of scalar inputs (fixed, not trained).

    .. math::
        \gamma(s) = [\,s,\ \sin(2\pi s\,b_{1..F}),\ \cos(2\pi s\,b_{1..F})\,],\quad b_k \sim \mathcal N(0, \sigma^2)

    Args:
        in_dim: number of scalars ``d`` per row.
        n_freq: ``F`` frequencies (0 returns the input unchanged).
        scale: ``sigma``.
    Shapes: ``(..., d)`` -> ``(..., d * (1 + 2F))`` (:attr:`out_dim`).
    """

    def __init__(self, in_dim: int, n_freq: int, scale: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(n_freq, generator=g) * scale * 2 * math.pi)
        self.out_dim = in_dim * (1 + 2 * n_freq)

    def forward(self, s: Tensor) -> Tensor:
        if self.freqs.numel() == 0:
            return s
        z = s.unsqueeze(-1) * self.freqs  # (..., d, F)
        return torch.cat([s, torch.sin(z).flatten(-2), torch.cos(z).flatten(-2)], dim=-1)


@dataclass
class DegreeBuckets:
    """Edges regrouped so that the in-edges of all nodes with the same in-degree ``d`` form one
    dense ``(n_d, d, ·)`` block: aggregation becomes a reshape and a dense reduction.

    Attributes:
        edge_order: ``(E,)`` permutation applied to the edges (stable: each node's in-edges
            stay contiguous).
        buckets: ``(d, node_ids (n_d,), start, end)`` for every in-degree ``d > 0``; edges
            ``start:end`` of the reordered list are the in-edges of ``node_ids`` in order.
        degree: ``(N,)`` in-degree of every node.
    """

    edge_order: Tensor
    buckets: list[tuple[int, Tensor, int, int]]
    degree: Tensor

    @staticmethod
    def build(dst: Tensor, n_nodes: int, in_degrees: Sequence[tuple[int, int]] | None = None) -> DegreeBuckets:
        """From destination ids ``(E,)`` of any graph or batch.

        ``in_degrees``: the ``(d, count)`` histogram of the nodes' in-degrees, ascending, degree 0
        included, when the host knows it (a batch of several architectures carries its
        :class:`~pipeline.graphs.store.BatchLayout`'s); then nothing is read back from the device.
        Without it the degrees are read back (``.tolist()``, a device synchronisation off the CPU):
        the path for one template, once (:class:`TemplateBuckets`).
        """
        deg = torch.zeros(n_nodes, dtype=torch.long, device=dst.device).index_add_(0, dst, torch.ones_like(dst))
        if in_degrees is not None or (dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any())):
            # group by destination first (stable keeps the source order within a node; an
            # identity on destinations already grouped)
            first = torch.argsort(dst, stable=True)
        else:
            first = None
        d_sorted = dst if first is None else dst[first]
        order = torch.argsort(deg[d_sorted], stable=True)
        if first is not None:
            order = first[order]
        buckets = []
        node_order = torch.argsort(deg, stable=True)
        if in_degrees is None:
            degs, counts = torch.unique_consecutive(deg[node_order], return_counts=True)
            in_degrees = zip(degs.tolist(), counts.tolist(), strict=True)
        n_start, e_start = 0, 0
        for d, c in in_degrees:
            nodes = node_order[n_start : n_start + c]
            if d > 0:
                buckets.append((d, nodes, e_start, e_start + d * c))
            n_start += c
            e_start += d * c
        return DegreeBuckets(order, buckets, deg)

    def aggregate(self, dst_term: Tensor, edge_term: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        r"""PNA aggregators ``[mean, min, max, std]`` of FiLM messages over every node's in-edges.

        The message of edge :math:`j \to i` is :math:`m_{ij} = s_{ij} \odot (u_i + v_{ij}) + t_{ij}`,
        formed per bucket so that the destination term :math:`u_i` is broadcast over the node's
        ``d`` in-edges instead of gathered per edge (its gradient is then a dense sum, not a
        scatter). :math:`\mathrm{std} = \sqrt{\mathrm{Var}[m] + 10^{-5}}`.

        Shapes: dst_term ``(N, H)``; edge_term, scale, shift ``(E, H)`` in bucket order
        -> ``(N, 4H)`` (zeros for nodes without in-edges).
        """
        n_nodes, H = dst_term.shape
        out = dst_term.new_zeros(n_nodes, 4 * H)
        # the buckets tile the edges in order: one split per tensor (its gradient is one
        # concatenation, where slicing would scatter every bucket's gradient into a zero (E, H))
        sizes = [e - s for _, _, s, e in self.buckets]
        parts = zip(*(t.split(sizes) for t in (edge_term, scale, shift)), strict=True)
        for (d, nodes, _, _), (edge_d, scale_d, shift_d) in zip(self.buckets, parts, strict=True):
            u = dst_term.index_select(0, nodes).unsqueeze(1)  # (n_d, 1, H)
            blk = torch.addcmul(shift_d.view(-1, d, H), scale_d.view(-1, d, H), edge_d.view(-1, d, H) + u)
            # two plain reductions: much faster on CPU than var_mean over a middle axis
            mean = blk.mean(dim=1)
            var = (blk - mean.unsqueeze(1)).square().mean(dim=1)
            lo, hi = torch.aminmax(blk, dim=1)
            out.index_copy_(0, nodes, torch.cat([mean, lo, hi, torch.sqrt(var + 1e-5)], dim=1))
        return out


class TemplateBuckets(nn.Module):
    r""":class:`DegreeBuckets` of a batch of ``G`` graphs that share one topology, without reading the batch.

    :meth:`DegreeBuckets.build` runs once, on the template's destinations. A batch of ``G``
    copies of the template (node ids of graph ``g`` offset by ``g N``, edges by ``g E``, graph-major:
    what :meth:`~pipeline.graphs.store.GraphSet.batch` and
    :func:`~pipeline.kan_forward.query_batch` build) has the same buckets with every template
    index ``i`` replaced by ``g N + i`` (``g E + i`` for edges), graph-major:

    .. math::
        \mathrm{nodes}_d = [\,g N + v\,]_{g < G,\ v \in \mathrm{nodes}^{t}_d},\qquad
        \mathrm{edges}_d = [\,g E + k\,]_{g < G,\ k \in \mathrm{edges}^{t}_d},\qquad
        [s_d, e_d) = G\,[s^t_d, e^t_d)

    which is exactly what :meth:`DegreeBuckets.build` returns on the batch (a stable sort by
    degree keeps the graph-major order), so aggregations are bit-identical; but the index
    tensors are made on the device with ``arange`` from the number of graphs alone (no host
    synchronisation) and cached per ``G`` (at most ``cache_size`` sizes; cleared on ``.to()``).
    The template's index tensors are non-persistent buffers (moved by ``.to(device)``, not in
    the ``state_dict``).

    Args:
        template: the topology (:class:`~pipeline.graphs.neural_graph.GraphTemplate`).
        cache_size: number of batch sizes kept.
    Shapes: ``G`` (a Python int) -> :class:`DegreeBuckets` of ``G N`` nodes, ``G E`` edges.
    """

    def __init__(self, template: GraphTemplate, cache_size: int = 8):
        super().__init__()
        one = DegreeBuckets.build(template.edge_index[1], template.n_nodes)
        self.n_nodes, self.n_edges = template.n_nodes, template.n_edges
        self.spans = [(d, s, e) for d, _, s, e in one.buckets]
        for k, (_, nodes, s, e) in enumerate(one.buckets):
            self.register_buffer(f"nodes_{k}", nodes, persistent=False)
            self.register_buffer(f"edges_{k}", one.edge_order[s:e], persistent=False)
        self.register_buffer("degree", one.degree, persistent=False)
        self.cache_size = cache_size
        self._cache: dict[int, DegreeBuckets] = {}

    def matches(self, n_nodes: int, n_edges: int, n_graphs: int) -> bool:
        """Whether a batch of these sizes is ``n_graphs`` copies of the template (sizes only: every
        graph of a zoo shares its template, so a batch of that zoo with these counts is one)."""
        return n_nodes == n_graphs * self.n_nodes and n_edges == n_graphs * self.n_edges

    def _apply(self, *args, **kwargs):
        self._cache.clear()  # cached indices live on the old device
        return super()._apply(*args, **kwargs)

    def forward(self, n_graphs: int) -> DegreeBuckets:
        if n_graphs in self._cache:
            return self._cache[n_graphs]
        G, N, E = n_graphs, self.n_nodes, self.n_edges
        g = torch.arange(G, device=self.degree.device).unsqueeze(1)
        node_off, edge_off = g * N, g * E
        buckets, orders = [], []
        for k, (d, s, e) in enumerate(self.spans):
            nodes = (node_off + getattr(self, f"nodes_{k}")).reshape(-1)
            orders.append((edge_off + getattr(self, f"edges_{k}")).reshape(-1))
            buckets.append((d, nodes, G * s, G * e))
        order = torch.cat(orders) if orders else self.degree.new_zeros(0)
        out = DegreeBuckets(order, buckets, self.degree.repeat(G))
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[n_graphs] = out
        return out


def output_states(x: Tensor, node_out: Tensor, n_graphs: int, n_out: int) -> Tensor:
    """The output neurons' states, graph by graph: ``x[node_out]`` as ``(B, n_out * H)``.

    The rows are found with :func:`torch.nonzero_static` of the known size ``B * n_out`` (every
    graph has ``n_out`` output neurons), so no host synchronisation, unlike boolean indexing. A
    wrong count raises: at once on the CPU, as a device-side assertion elsewhere (no wait).

    Shapes: x ``(ΣN, H)``, node_out ``(ΣN,)`` bool with ``n_out`` per graph -> ``(B, n_out H)``.
    """
    size = n_graphs * n_out
    torch._assert_async(node_out.sum() == size, f"expected {n_out} output neurons in each of {n_graphs} graphs")
    rows = torch.nonzero_static(node_out, size=size).squeeze(1)
    return x.index_select(0, rows).view(n_graphs, n_out * x.shape[1])


class GraphStates(NamedTuple):
    """What a neural-graph encoder (NG-GNN, NG-T) computes for a batch of ``ΣN`` nodes, ``ΣE`` edges.

    Attributes:
        x: ``(ΣN, H)`` node states, in the batch's node order.
        e: ``(ΣE, H)`` edge states; row ``k`` belongs to the batch's edge ``edge_order[k]``.
        src, dst: ``(ΣE,)`` source / destination node of every row of ``e``.
        edge_order: ``(ΣE,)`` the order of ``e`` (a permutation of the batch's edges).
    """

    x: Tensor
    e: Tensor
    src: Tensor
    dst: Tensor
    edge_order: Tensor


class GraphEditHead(nn.Module):
    r"""Equivariant editing readout of a neural-graph encoder: a residual update of every parameter.

    Node ``v`` (a neuron) and edge ``u \to v`` (a weight) get updates of their raw feature widths
    from their final states, the edge also reading both end nodes:

    .. math::
        \Delta x_v = W_n x_v + c_n,\qquad
        \Delta e_{uv} = W_2\,\mathrm{SiLU}(W_1 [e_{uv} \Vert x_u \Vert x_v] + c_1) + c_2

        f'_v = f_v + \alpha\,\Delta x_v,\quad w'_{uv} = w_{uv} + \alpha\,\Delta e_{uv},\qquad
        \theta' = \mathrm{vec}(\mathrm{params}(f', w')),\qquad \alpha_0 = \texttt{init\_scale}

    with :math:`f, w` the graph's input node / edge features and :math:`\mathrm{params}` the
    inverse of the graph construction (:func:`~pipeline.graphs.neural_graph.features_to_params`;
    feature entries that hold no parameter, such as input nodes' zero biases, are dropped).
    Each update depends only on its own node / edge and its end nodes, so permuting hidden
    neurons permutes the edited parameters alike. The edit is made in the feature space of the
    graphs (normalized parameters, if the graphs are), so :math:`\theta'` is too.

    Args:
        template: the topology every graph of a batch shares (homogeneous batches only).
        hidden: ``H``.  init_scale: :math:`\alpha_0`.
    Shapes: :class:`GraphStates` and the PyG batch of ``B`` graphs -> ``(B, P)`` flattened
    parameters (:func:`~pipeline.weightspace.spec.flatten` order of ``template.spec``).
    """

    def __init__(self, template: GraphTemplate, hidden: int, init_scale: float = 1e-3):
        super().__init__()
        self.template = template
        self.node_out = nn.Linear(hidden, template.node_dim)
        self.edge_out = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, template.edge_dim))
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, states: GraphStates, batch: Batch) -> Tensor:
        t, G = self.template, batch.num_graphs
        if batch.x.shape[0] != G * t.n_nodes or batch.edge_attr.shape[0] != G * t.n_edges:
            raise ValueError("graph editing needs a batch of graphs that all share the head's template")
        x, e, src, dst, order = states
        d_node = self.node_out(x)
        d_edge = self.edge_out(torch.cat([e, x.index_select(0, src), x.index_select(0, dst)], dim=1))
        d_edge = d_edge.new_zeros(d_edge.shape).index_copy(0, order, d_edge)  # back to the batch's edge order
        nodes = batch.x + self.scale * d_node
        edges = batch.edge_attr + self.scale * d_edge
        params = features_to_params(nodes.view(G, t.n_nodes, -1), edges.view(G, t.n_edges, -1), t)
        return flatten(params, t.spec)
