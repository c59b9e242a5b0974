r"""NG-T (Neural Graphs): a relational transformer on neural graphs.

Attention runs along the graph's edges in both directions (a node attends to its in- and
out-neighbours; a learned direction code is added to the edge state), so no dense ``n x n``
edge tensor is ever built and padding never exists (every attended node is real: the mask of
the reference implementation is implicit). For a node ``i`` attending to neighbour ``j`` over
the edge state :math:`e_{ij}` (head ``h``, width ``d = H / heads``):

.. math::
    q_{ij} = W_q x_i + W_{qe} e_{ij},\quad k_{ij} = W_k x_j + W_{ke} e_{ij},\quad
    v_{ij} = (W_v x_j) \odot (W_s e_{ij}) + W_h e_{ij}

    \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal N(i)}\big(q_{ij}^{(h)} \cdot k_{ij}^{(h)} / \sqrt d\big),\qquad
    a_i = W_o \big\Vert_h \textstyle\sum_j \alpha^{(h)}_{ij} v^{(h)}_{ij}

    x_i' = \mathrm{LN}(x_i + \mathrm{Drop}(a_i)),\qquad
    x_i'' = \mathrm{LN}(x_i' + \mathrm{Drop}(\mathrm{MLP}_{\mathrm{GELU}}(x_i')))

    e_{ij}' = \mathrm{LN}\big(e_{ij} + \mathrm{MLP}([e_{ij} \Vert x''_{\mathrm{src}} \Vert x''_{\mathrm{dst}}])\big)
    \quad\text{(all layers but the last)}

MLP graphs are DAGs, so the reverse edge :math:`e_{ji}` of the paper's edge update does not
exist; the update reads the edge and both end nodes. Readout as NG-GNN: the output neurons'
states concatenated, then an MLP. Invariant to hidden-neuron permutations (shared positional
codes per hidden layer, permutation-invariant softmax and sums). The states of
:class:`NGTEncoder` are equivariant; :class:`NGT` reads them out invariantly, :class:`NGTEditor`
turns them into edited parameters (:class:`~pipeline.models.layers.GraphEditHead`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import softmax

from pipeline.graphs.neural_graph import GraphTemplate
from pipeline.models import DataShape
from pipeline.models.layers import GraphEditHead, GraphStates


class NGTLayer(nn.Module):
    """One relational-attention layer. Shapes: x ``(N, H)``, e ``(E, H)``, src/dst ``(E,)`` -> same."""

    def __init__(self, hidden: int, heads: int, dropout: float, update_edges: bool):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} must be a multiple of heads {heads}")
        self.heads, self.d = heads, hidden // heads
        self.node_qkv = nn.Linear(hidden, 3 * hidden)  # W_q, W_k, W_v
        self.edge_proj = nn.Linear(hidden, 4 * hidden)  # W_qe, W_ke, W_s, W_h
        self.out = nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)
        self.update_edges = update_edges
        if update_edges:
            self.edge_mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            self.edge_norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, e: Tensor, src: Tensor, dst: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
        N, H = x.shape
        # attend both ways: receiver r <- sender s over every edge, forwards and backwards
        recv, send = torch.cat([dst, src]), torch.cat([src, dst])
        e2 = torch.cat([e, e]) + direction  # (2E, H), direction code per half
        q, k, v = self.node_qkv(x).split(H, dim=1)
        qe, ke, s, h = self.edge_proj(e2).split(H, dim=1)
        heads = (-1, self.heads, self.d)
        qq = (q.index_select(0, recv) + qe).view(heads)
        kk = (k.index_select(0, send) + ke).view(heads)
        vv = (v.index_select(0, send) * s + h).view(heads)
        score = (qq * kk).sum(-1) / math.sqrt(self.d)  # (2E, heads)
        alpha = softmax(score, recv, num_nodes=N)
        agg = x.new_zeros(N, self.heads, self.d).index_add_(0, recv, alpha.unsqueeze(-1) * vv)
        x = self.norm1(x + self.drop(self.out(agg.view(N, H))))
        x = self.norm2(x + self.drop(self.mlp(x)))
        if self.update_edges:
            upd = self.edge_mlp(torch.cat([e, x.index_select(0, src), x.index_select(0, dst)], dim=1))
            e = self.edge_norm(e + self.drop(upd))
        return x, e


class NGTEncoder(nn.Module):
    r"""The equivariant trunk of NG-T: a batch of neural graphs -> node and edge states.

    .. math::
        x^0_v = W_x f_v + P[\mathrm{pos}(v)],\qquad e^0_{uv} = W_e w_{uv},\qquad
        x^{t+1}, e^{t+1} = \mathrm{NGTLayer}_t(x^t, e^t)

    (positional table :math:`P` as NG-GNN's; a learned forward / backward direction code is
    added to the edge states inside every layer; the last layer keeps the edges).

    Args: as :class:`NGT` (without ``n_out``, ``n_classes``).
    Shapes: a PyG batch -> :class:`~pipeline.models.layers.GraphStates` (``H = hidden``; edges in
    the batch's order).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        n_pos: int,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.node_in = nn.Linear(node_dim, hidden)
        self.edge_in = nn.Linear(edge_dim, hidden)
        self.pos = nn.Embedding(n_pos, hidden)
        self.direction = nn.Parameter(torch.randn(2, hidden) * 0.1)  # forward / backward edge code
        self.layers = nn.ModuleList(NGTLayer(hidden, heads, dropout, k < layers - 1) for k in range(layers))

    def forward(self, batch) -> GraphStates:
        src, dst = batch.edge_index
        E = src.numel()
        x = self.node_in(batch.x) + self.pos(batch.node_pos)
        e = self.edge_in(batch.edge_attr)
        direction = self.direction.repeat_interleave(E, dim=0)  # (2E, H)
        for layer in self.layers:
            x, e = layer(x, e, src, dst, direction)
        return GraphStates(x, e, src, dst, torch.arange(E, device=src.device))


class NGT(nn.Module):
    """NG-T classifier / regressor of neural graphs: :class:`NGTEncoder`, then the output neurons'
    states concatenated and a two-layer GELU MLP.

    Args:
        node_dim, edge_dim: raw feature widths.  n_pos: positional ids.  n_out: output neurons.
        n_classes: outputs.  hidden, layers, heads, dropout: width, depth, attention heads, dropout.
    Shapes: a PyG batch of ``B`` graphs (x, edge_index, edge_attr, node_pos, node_out) -> ``(B, n_classes)``.
    """

    input_kind = "graph"

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        n_pos: int,
        n_out: int,
        n_classes: int,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_out = n_out
        self.encoder = NGTEncoder(node_dim, edge_dim, n_pos, hidden, layers, heads, dropout)
        self.head = nn.Sequential(
            nn.Linear(n_out * hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, batch) -> Tensor:
        x = self.encoder(batch).x
        return self.head(x[batch.node_out].view(batch.num_graphs, -1))


class NGTEditor(nn.Module):
    r"""NG-T for weight-space editing: :class:`NGTEncoder`, then :class:`GraphEditHead`.

    .. math:: \theta' = \theta + \alpha\,\mathrm{vec}(\Delta(x^T, e^T))

    Args:
        template: the graph topology of the zoo (every batch must share it).
        hidden, layers, heads, dropout: as :class:`NGT`.  init_scale: :math:`\alpha_0`.
    Shapes: a PyG batch of ``B`` graphs -> edited parameters ``(B, P)`` in
    :func:`~pipeline.weightspace.spec.flatten` order (in the graphs' normalization).
    """

    input_kind = "graph"

    def __init__(
        self,
        template: GraphTemplate,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.encoder = NGTEncoder(template.node_dim, template.edge_dim, template.n_pos, hidden, layers, heads, dropout)
        self.head = GraphEditHead(template, hidden, init_scale)

    def forward(self, batch) -> Tensor:
        return self.head(self.encoder(batch), batch)


@dataclass(frozen=True)
class Settings:
    """``<section>.ng_t`` of ``params.yaml``."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0


INPUT_KIND = "graph"


def build(s: Settings, shape: DataShape) -> NGT:
    """NG-T on the zoo's neural graphs."""
    return NGT(
        shape.node_dim,
        shape.edge_dim,
        shape.n_pos,
        shape.n_out,
        shape.n_classes,
        s.hidden,
        s.layers,
        s.heads,
        s.dropout,
    )


def build_editor(s: Settings, shape: DataShape, init_scale: float) -> NGTEditor:
    """NG-T with node / edge editing heads on the zoo's neural graphs."""
    return NGTEditor(shape.template, s.hidden, s.layers, s.heads, s.dropout, init_scale)
