"""Building blocks shared by metanetworks: Fourier features, fast neighbourhood aggregation, graph editing."""

from __future__ import annotations

import math
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
    def build(dst: Tensor, n_nodes: int) -> DegreeBuckets:
        """From destination ids ``(E,)`` (edges already grouped by destination)."""
        deg = torch.bincount(dst, minlength=n_nodes)
        if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
            # group by destination first (stable keeps the source order within a node)
            first = torch.argsort(dst, stable=True)
        else:
            first = None
        d_sorted = dst if first is None else dst[first]
        order = torch.argsort(deg[d_sorted], stable=True)
        if first is not None:
            order = first[order]
        buckets = []
        node_order = torch.argsort(deg, stable=True)
        degs, counts = torch.unique_consecutive(deg[node_order], return_counts=True)
        n_start, e_start = 0, 0
        for d, c in zip(degs.tolist(), counts.tolist(), strict=True):
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
        for d, nodes, s, e in self.buckets:
            u = dst_term.index_select(0, nodes).unsqueeze(1)  # (n_d, 1, H)
            blk = torch.addcmul(shift[s:e].view(-1, d, H), scale[s:e].view(-1, d, H), edge_term[s:e].view(-1, d, H) + u)
            # two plain reductions: much faster on CPU than var_mean over a middle axis
            mean = blk.mean(dim=1)
            var = (blk - mean.unsqueeze(1)).square().mean(dim=1)
            lo, hi = torch.aminmax(blk, dim=1)
            out.index_copy_(0, nodes, torch.cat([mean, lo, hi, torch.sqrt(var + 1e-5)], dim=1))
        return out


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
