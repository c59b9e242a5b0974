"""Building blocks shared by metanetworks: Fourier features and fast neighbourhood aggregation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


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
            var, mean = torch.var_mean(blk, dim=1, correction=0)
            lo, hi = torch.aminmax(blk, dim=1)
            out = out.index_copy(0, nodes, torch.cat([mean, lo, hi, torch.sqrt(var + 1e-5)], dim=1))
        return out
