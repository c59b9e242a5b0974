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
exist; the update reads the edge and both end nodes.

``attention="all_pairs"`` is the reference code's choice instead (:class:`NGTPairLayer`): every
ordered node pair of a graph has a state, the weight's for an edge and a learned "no edge"
state otherwise, and every node attends to every node of its graph. Readout as NG-GNN: the output neurons'
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

from pipeline.config import MAX_WIDTH, setting
from pipeline.graphs.neural_graph import GraphTemplate
from pipeline.models import DataShape
from pipeline.models.layers import GraphEditHead, GraphStates, output_states
from pipeline.models.probes import (
    ForwardSpec,
    make_probe_projection,
    make_probes,
    probe_variant,
    probe_variant_label,
)

ATTENTION = ("edges", "all_pairs")


class NGTLayer(nn.Module):
    """One relational-attention layer.

    Shapes: x ``(N, H)``, e ``(E, H)``, src/dst ``(E,)``, direction ``(2, H)`` -> x, e."""

    def __init__(self, hidden: int, heads: int, dropout: float, update_edges: bool, edge_width: int = 0):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} must be a multiple of heads {heads}")
        self.heads, self.d = heads, hidden // heads
        self.node_qkv = nn.Linear(hidden, 3 * hidden)  # W_q, W_k, W_v
        self.edge_proj = nn.Linear(edge_width or hidden, 4 * hidden)  # W_qe, W_ke, W_s, W_h
        self.out = nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)
        self.update_edges = update_edges
        if update_edges:
            # first layer of MLP([e || x_src || x_dst]) split by block: per-node parts computed on nodes, then gathered
            self.edge_in = nn.Linear(hidden, hidden)
            self.edge_nodes = nn.Linear(hidden, 2 * hidden, bias=False)
            self.edge_out = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden))
            self.edge_norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, e: Tensor, src: Tensor, dst: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
        N, H = x.shape
        # attend both ways: over every edge forwards (dst <- src) and backwards (src <- dst), the
        # edge state plus the half's direction code c. The edge projections are affine, so they
        # are computed once per edge, and the code's projections W c are added where they cost
        # least: to the node terms before the gather for q and k (N rows, not E), to the edge
        # terms for s and h (the same equation, no (E, 4H) copy per half).
        q, k, v = self.node_qkv(x).split(H, dim=1)
        qe, ke, s, h = self.edge_proj(e).split(H, dim=1)  # (E, H) each
        cq, ck, cs, ch = nn.functional.linear(direction, self.edge_proj.weight).split(H, dim=1)  # (2, H) each
        heads = (-1, self.heads, self.d)
        scores, values = [], []
        for half, (recv, send) in enumerate(((dst, src), (src, dst))):
            qq = ((q + cq[half]).index_select(0, recv) + qe).view(heads)
            kk = ((k + ck[half]).index_select(0, send) + ke).view(heads)
            vv = torch.addcmul(h + ch[half], v.index_select(0, send), s + cs[half]).view(heads)
            scores.append((qq * kk).sum(-1) / math.sqrt(self.d))  # (E, heads)
            values.append(vv)
        recv_all = torch.cat([dst, src])
        alpha = softmax(torch.cat(scores), recv_all, num_nodes=N).split(src.numel())
        agg = x.new_zeros(N, self.heads, self.d)
        agg.index_add_(0, dst, alpha[0].unsqueeze(-1) * values[0])
        agg.index_add_(0, src, alpha[1].unsqueeze(-1) * values[1])
        x = self.update_nodes(x, agg.view(N, H))
        if self.update_edges:
            a, b = self.edge_nodes(x).split(H, dim=1)
            upd = self.edge_out(self.edge_in(e) + a.index_select(0, src) + b.index_select(0, dst))
            e = self.edge_norm(e + self.drop(upd))
        return x, e

    def update_nodes(self, x: Tensor, agg: Tensor) -> Tensor:
        """Output projection of the attention, residuals, norms and the node MLP: ``(..., H)`` -> ``(..., H)``."""
        x = self.norm1(x + self.drop(self.out(agg)))
        return self.norm2(x + self.drop(self.mlp(x)))


class NGTPairLayer(NGTLayer):
    r"""One relational-attention layer over all ordered node pairs of each graph (dense).

    Every pair has a state :math:`e_{ij}` (``i`` the source row, ``j`` the destination column);
    node ``i`` attends to every node ``j`` of its graph (itself included) through both
    orientations of the pair, :math:`r_{ij} = A e_{ji} + B e_{ij}` (the incoming and the
    outgoing state: which one carries a weight tells the edge's direction):

    .. math::
        [r^q, r^k, r^s, r^h]_{ij} = W_r [e_{ji} \Vert e_{ij}],\qquad
        q_{ij} = W_q x_i + r^q_{ij},\quad k_{ij} = W_k x_j + r^k_{ij},\quad
        v_{ij} = (W_v x_j) \odot r^s_{ij} + r^h_{ij}

    then the softmax over all ``j``, output projection, residuals, norms and node MLP as
    :class:`NGTLayer`, and every pair's update
    :math:`e_{ij}' = \mathrm{LN}(e_{ij} + \mathrm{MLP}([e_{ij} \Vert x''_i \Vert x''_j]))`
    (all layers but the last).

    Shapes: x ``(G, n, H)``, e ``(G, n, n, H)`` -> x, e (``G`` graphs of ``n`` nodes).
    """

    def __init__(self, hidden: int, heads: int, dropout: float, update_edges: bool):
        super().__init__(hidden, heads, dropout, update_edges, edge_width=2 * hidden)  # W_r over [e_ji, e_ij]

    def forward(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        G, n, H = x.shape
        q, k, v = self.node_qkv(x).split(H, dim=2)
        rq, rk, rs, rh = self.edge_proj(torch.cat([e.transpose(1, 2), e], dim=3)).split(H, dim=3)
        heads = (G, n, n, self.heads, self.d)
        qq = (q.unsqueeze(2) + rq).view(heads)
        kk = (k.unsqueeze(1) + rk).view(heads)
        vv = (v.unsqueeze(1) * rs + rh).view(heads)
        alpha = torch.softmax((qq * kk).sum(-1) / math.sqrt(self.d), dim=2)  # (G, n_i, n_j, heads)
        x = self.update_nodes(x, (alpha.unsqueeze(-1) * vv).sum(2).reshape(G, n, H))
        if self.update_edges:
            a, b = self.edge_nodes(x).split(H, dim=2)
            upd = self.edge_out(self.edge_in(e) + a.unsqueeze(2) + b.unsqueeze(1))
            e = self.edge_norm(e + self.drop(upd))
        return x, e


def pair_index(src: Tensor, dst: Tensor, n: int) -> Tensor:
    """Flat index of every edge's pair in a ``(G, n, n)`` grid: graph ``g = src // n`` (graph-major
    node ids, ``n`` nodes per graph), row ``src - g n``, column ``dst - g n``.

    Shapes: src, dst ``(E,)`` -> ``(E,)``."""
    g = torch.div(src, n, rounding_mode="floor")
    return g * n * n + (src - g * n) * n + (dst - g * n)


class NGTEncoder(nn.Module):
    r"""The equivariant trunk of NG-T: a batch of neural graphs -> node and edge states.

    .. math::
        x^0_v = W_x f_v + P[\mathrm{pos}(v)],\qquad e^0_{uv} = W_e w_{uv},\qquad
        x^{t+1}, e^{t+1} = \mathrm{NGTLayer}_t(x^t, e^t)

    (positional table :math:`P` as NG-GNN's; a learned forward / backward direction code is
    added to the edge states inside every layer; the last layer keeps the edges). With
    ``probe_features = M > 0``, :math:`f_v` also holds the neuron's activations at ``M`` learned
    input points (:class:`~pipeline.models.probes.ProbeFeatures`, as NG-GNN).

    With ``attention="all_pairs"`` the layers are :class:`NGTPairLayer`: the pair states start
    at :math:`W_e w_{uv}` on the edges and at :math:`W_e 0` (the bias: "no edge") elsewhere;
    every graph of the batch must have the same number of nodes (one zoo's topology).

    Args: as :class:`NGT` (without ``n_classes``).
    Shapes: a PyG batch -> :class:`~pipeline.models.layers.GraphStates` (``H = hidden``; edges in
    the batch's order).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        n_pos: int,
        *,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        n_out: int = 1,
        probe_features: int = 0,
        forward_spec: ForwardSpec | None = None,
        probe_projection: bool = False,
        attention: str = "edges",
    ):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention {attention!r} is not one of {ATTENTION}")
        self.probes = make_probes(probe_features, n_pos, n_out, forward_spec)
        self.probe_proj = make_probe_projection(probe_features, forward_spec, hidden, probe_projection)
        self.node_in = nn.Linear(node_dim + (probe_features if self.probe_proj is None else 0), hidden)
        self.edge_in = nn.Linear(edge_dim, hidden)
        self.pos = nn.Embedding(n_pos, hidden)
        self.all_pairs = attention == "all_pairs"
        if self.all_pairs:
            self.layers = nn.ModuleList(NGTPairLayer(hidden, heads, dropout, k < layers - 1) for k in range(layers))
        else:
            self.direction = nn.Parameter(torch.randn(2, hidden) * 0.1)  # forward / backward edge code
            self.layers = nn.ModuleList(NGTLayer(hidden, heads, dropout, k < layers - 1) for k in range(layers))

    def forward(self, batch) -> GraphStates:
        src, dst = batch.edge_index
        E = src.numel()
        probes = None if self.probes is None else self.probes(batch)
        feats = batch.x if probes is None or self.probe_proj is not None else torch.cat([batch.x, probes], dim=1)
        x = self.node_in(feats) + self.pos(batch.node_pos)
        if self.probe_proj is not None:
            x = x + self.probe_proj(probes, batch.node_layer)
        order = torch.arange(E, device=src.device)
        if not self.all_pairs:
            e = self.edge_in(batch.edge_attr)
            for layer in self.layers:
                x, e = layer(x, e, src, dst, self.direction)
            return GraphStates(x, e, src, dst, order)
        N, G = x.shape[0], batch.num_graphs
        n = N // G
        if n * G != N:
            raise ValueError(f"all-pairs attention needs graphs of one size; got {N} nodes in {G} graphs")
        raw = batch.edge_attr.new_zeros(G * n * n, batch.edge_attr.shape[1])
        pairs = pair_index(src, dst, n)
        raw = raw.index_copy(0, pairs, batch.edge_attr)
        xd, e = x.view(G, n, -1), self.edge_in(raw).view(G, n, n, -1)
        for layer in self.layers:
            xd, e = layer(xd, e)
        return GraphStates(xd.reshape(N, -1), e.reshape(G * n * n, -1).index_select(0, pairs), src, dst, order)


class NGT(nn.Module):
    """NG-T classifier / regressor of neural graphs: :class:`NGTEncoder`, then the output neurons'
    states concatenated and a two-layer GELU MLP.

    Args:
        node_dim, edge_dim: raw feature widths.  n_pos: positional ids.  n_out: output neurons.
        n_classes: outputs.  hidden, layers, heads, dropout: width, depth, attention heads, dropout.
        probe_features: ``M`` learned probe points (0: none); needs ``forward_spec``.
        probe_projection: probe values enter through per-layer ``Linear + LayerNorm`` maps (the
            reference code; :class:`~pipeline.models.probes.ProbeProjection`).
        attention: ``"edges"`` (along the edges, both ways) or ``"all_pairs"`` (the reference code).
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
        *,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        probe_features: int = 0,
        forward_spec: ForwardSpec | None = None,
        probe_projection: bool = False,
        attention: str = "edges",
    ):
        super().__init__()
        self.n_out = n_out
        self.encoder = NGTEncoder(
            node_dim,
            edge_dim,
            n_pos,
            hidden=hidden,
            layers=layers,
            heads=heads,
            dropout=dropout,
            n_out=n_out,
            probe_features=probe_features,
            forward_spec=forward_spec,
            probe_projection=probe_projection,
            attention=attention,
        )
        self.head = nn.Sequential(
            nn.Linear(n_out * hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, batch) -> Tensor:
        x = self.encoder(batch).x
        return self.head(output_states(x, batch.node_out, batch.num_graphs, self.n_out))


class NGTEditor(nn.Module):
    r"""NG-T for weight-space editing: :class:`NGTEncoder`, then :class:`GraphEditHead`.

    .. math:: \theta' = \theta + \alpha\,\mathrm{vec}(\Delta(x^T, e^T))

    Args:
        template: the graph topology of the zoo (every batch must share it).
        hidden, layers, heads, dropout, probe_features, forward_spec, probe_projection, attention:
            as :class:`NGT`.
        init_scale: :math:`\alpha_0`.
    Shapes: a PyG batch of ``B`` graphs -> edited parameters ``(B, P)`` in
    :func:`~pipeline.weightspace.spec.flatten` order (in the graphs' normalization).
    """

    input_kind = "graph"

    def __init__(
        self,
        template: GraphTemplate,
        *,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        probe_features: int = 0,
        forward_spec: ForwardSpec | None = None,
        init_scale: float = 1e-3,
        probe_projection: bool = False,
        attention: str = "edges",
    ):
        super().__init__()
        t = template
        self.encoder = NGTEncoder(
            t.node_dim,
            t.edge_dim,
            t.n_pos,
            hidden=hidden,
            layers=layers,
            heads=heads,
            dropout=dropout,
            n_out=t.spec.layer_sizes[-1],
            probe_features=probe_features,
            forward_spec=forward_spec,
            probe_projection=probe_projection,
            attention=attention,
        )
        self.head = GraphEditHead(template, hidden, init_scale)

    def forward(self, batch) -> Tensor:
        return self.head(self.encoder(batch), batch)


@dataclass(frozen=True)
class Settings:
    """``<section>.ng_t`` of ``params.yaml``."""

    hidden: int = setting(64, gt=0, le=MAX_WIDTH)
    layers: int = setting(4, gt=0)
    heads: int = setting(4, gt=0, le=MAX_WIDTH)
    dropout: float = setting(0.0, ge=0, lt=1)
    probe_features: int = setting(0, ge=0)  # M learned input points run through every INR (0 = none)
    probe_projection: bool = False  # probes: per-layer Linear + LayerNorm, added (the reference code)
    attention: str = setting("edges", one_of=ATTENTION)  # the reference code: all_pairs

    def check(self) -> list[tuple[str, str]]:
        """Each attention head takes ``hidden / heads`` channels."""
        if self.hidden % self.heads:
            return [("hidden", f"{self.hidden} must be a multiple of heads ({self.heads})")]
        return []


INPUT_KIND = "graph"
LABEL = "NG-T"
REPORT_ORDER = 70
ANY_ARCHITECTURE = True  # reads graphs of several architectures (no single spec needed)


variant, variant_label = probe_variant, probe_variant_label  # the report's variant: with probes or not


def build(s: Settings, shape: DataShape) -> NGT:
    """NG-T on the zoo's neural graphs."""
    return NGT(
        shape.node_dim,
        shape.edge_dim,
        shape.n_pos,
        shape.n_out,
        shape.n_classes,
        hidden=s.hidden,
        layers=s.layers,
        heads=s.heads,
        dropout=s.dropout,
        probe_features=s.probe_features,
        forward_spec=shape.forward_spec,
        probe_projection=s.probe_projection,
        attention=s.attention,
    )


def build_editor(s: Settings, shape: DataShape, init_scale: float) -> NGTEditor:
    """NG-T with node / edge editing heads on the zoo's neural graphs."""
    return NGTEditor(
        shape.template,
        hidden=s.hidden,
        layers=s.layers,
        heads=s.heads,
        dropout=s.dropout,
        probe_features=s.probe_features,
        forward_spec=shape.forward_spec,
        init_scale=init_scale,
        probe_projection=s.probe_projection,
        attention=s.attention,
    )
