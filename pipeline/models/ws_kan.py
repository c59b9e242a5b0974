r"""WS-KAN: a weight-space network for Kolmogorov-Arnold networks, by message passing on the KAN-graph.

The KAN-graph (:func:`pipeline.graphs.neural_graph.graph_template` of a
:func:`pipeline.zoo.kan.kan_spec`) has one node per neuron; edge ``i -> j`` of parameter layer
``l`` carries the vector :math:`[\mathrm{coef}_{ij} \Vert \mathrm{scale\_base}_{ij} \Vert
\mathrm{scale\_sp}_{ij}]` and source node ``i`` its grid knots. A KAN layer computes
:math:`x_j' = \sum_i \varphi_{ij}(x_i)` with :math:`\varphi_{ij}` fixed by edge ``ij``'s
vector and node ``i``'s knots; a WS-KAN layer aggregates a learned :math:`\phi(h_i, e_{ij})`
with the same sum, so (with enough width) it can reproduce the KAN's forward pass layer by layer.

Invariant to hidden-neuron permutations by construction: hidden nodes of one layer share one
positional embedding, the aggregation is a sum, and the readout uses only the (unpermutable)
output neurons and a mean over all nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import Batch

from pipeline.config import MAX_WIDTH, setting
from pipeline.models import DataShape
from pipeline.models.layers import output_states


class WSKANLayer(nn.Module):
    r"""One WS-KAN layer: sum-aggregated MLP messages, residual node update, residual edge update.

    For an edge :math:`i \to j` (source ``i``, destination ``j``) with features :math:`e_{ij}`:

    .. math::
        m_{ij} = W_2\,\big[\mathrm{SiLU}(W_1^h h_i + W_1^e e_{ij} + b_1) \odot (W_g e_{ij} + b_g)\big] + b_2,\qquad
        a_j = \mathrm{Dropout}\Big(\sum_{i \to j} m_{ij}\Big)

        h_j' = \mathrm{LN}\big(h_j + \mathrm{Dropout}(\mathrm{MLP}_h([h_j \Vert a_j]))\big)

        e_{ij}' = \mathrm{LN}\big(e_{ij} + \mathrm{Dropout}(W_4\,\mathrm{SiLU}(W_3^e e_{ij} + W_3^s h_i' + W_3^d h_j'
        + b_3) + b_4)\big)\quad\text{(if ``update_edges``)}

    with :math:`\mathrm{MLP}_h` two linear maps with a SiLU between. The gate :math:`W_g e_{ij}`
    makes the message bilinear in (function of the source state) x (edge vector), the form of a
    KAN edge function :math:`\sum_m c_{ijm} B_m(x_i)`: without it the expressivity check
    (predicting a KAN's output at a query point) does not move off the mean. The first linear map of each
    edge MLP is split by input block so that :math:`W_1^h h`, :math:`W_3^s h'` and
    :math:`W_3^d h'` are computed per node and gathered per edge, and :math:`W_1^e e` and
    :math:`W_3^e e` share one matrix product over the edges. :math:`W_2` is linear, so it is
    applied after the sum: :math:`a_j = W_2 \sum_i \mathrm{SiLU}(\cdot) + d_j b_2` with
    :math:`d_j` the in-degree (the same value, one ``(N, H) x (H, H)`` product instead of
    ``(E, H) x (H, H)``). The sum is an ``index_add_`` along destinations.

    Args:
        hidden: width ``H`` of node and edge states.
        dropout: dropout after every MLP.
        update_edges: whether to update the edge states (the last layer's would be unused).
    Shapes: h ``(N, H)``, e ``(E, H)``, src/dst ``(E,)`` long, in_degree ``(N, 1)``
    -> ``(N, H)``, ``(E, H)``.
    """

    def __init__(self, hidden: int, dropout: float, update_edges: bool):
        super().__init__()
        self.hidden = hidden
        self.update_edges = update_edges
        self.msg_node = nn.Linear(hidden, hidden)  # W_1^h, b_1
        self.edge_proj = nn.Linear(hidden, (3 if update_edges else 2) * hidden, bias=False)  # [W_1^e, W_g, W_3^e]
        self.gate_bias = nn.Parameter(torch.ones(hidden))  # b_g
        self.msg_out = nn.Linear(hidden, hidden)  # W_2, b_2 (applied after the sum)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.node_norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        if update_edges:
            self.edge_nodes = nn.Linear(hidden, 2 * hidden)  # [W_3^s, W_3^d], b_3
            self.edge_out = nn.Linear(hidden, hidden)  # W_4, b_4
            self.edge_norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor, in_degree: Tensor) -> tuple[Tensor, Tensor]:
        H = self.hidden
        proj = self.edge_proj(e)
        e_msg = proj[:, :H]
        gate = proj[:, H : 2 * H] + self.gate_bias
        z = F.silu(self.msg_node(h).index_select(0, src) + e_msg) * gate  # (E, H): hidden layer of m_ij
        summed = h.new_zeros(h.shape).index_add_(0, dst, z)  # (N, H): sum over in-edges
        a = self.drop(F.linear(summed, self.msg_out.weight) + in_degree * self.msg_out.bias)
        h = self.node_norm(h + self.drop(self.node_mlp(torch.cat([h, a], dim=1))))
        if self.update_edges:
            hs, hd = self.edge_nodes(h).split(H, dim=1)
            u = F.silu(proj[:, 2 * H :] + hs.index_select(0, src) + hd.index_select(0, dst))
            e = self.edge_norm(e + self.drop(self.edge_out(u)))
        return h, e


class WSKAN(nn.Module):
    r"""WS-KAN regressor / classifier of KAN-graphs.

    .. math::
        h^0_v = W_x f_v + P[\mathrm{pos}(v)],\qquad e^0_{ij} = W_e w_{ij}

        h^{t+1}, e^{t+1} = \mathrm{Layer}_t(h^t, e^t)\quad(t = 0..T-1),\qquad
        \hat y = \mathrm{MLP}\Big(\big[\,h^T_{o_1} \Vert \dots \Vert h^T_{o_{n_{out}}} \Vert
        \tfrac{1}{|V|}\textstyle\sum_{v} h^T_v\,\big]\Big)

    with :math:`f_v` the node's raw features (its grid knots; zeros for output neurons),
    :math:`w_{ij}` the edge's :math:`[\mathrm{coef} \Vert \mathrm{scale\_base} \Vert
    \mathrm{scale\_sp}]`, :math:`P` the positional embedding table (own row per input and output
    neuron, one row shared by each hidden layer) and :math:`o_1 .. o_{n_{out}}` the output
    neurons in order. Layers are :class:`WSKANLayer`; the last one skips the edge update.

    Args:
        node_dim, edge_dim: raw feature widths of the graphs.
        n_pos: number of positional ids.  n_out: output neurons per graph (read out in order).
        n_targets: outputs per graph (logits or regression targets).
        hidden, layers, dropout: width ``H``, depth ``T``, dropout after every MLP.
    Shapes: a PyG :class:`Batch` of ``B`` graphs (x ``(ΣN, node_dim)``, edge_index ``(2, ΣE)``
    source/destination, edge_attr ``(ΣE, edge_dim)``, node_pos ``(ΣN,)``, node_out ``(ΣN,)``
    bool with exactly ``n_out`` per graph, batch ``(ΣN,)``) -> ``(B, n_targets)``.
    """

    input_kind = "graph"

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        n_pos: int,
        n_out: int,
        n_targets: int,
        *,
        hidden: int = 64,
        layers: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_out = n_out
        self.node_in = nn.Linear(node_dim, hidden)
        self.edge_in = nn.Linear(edge_dim, hidden)
        self.pos = nn.Embedding(n_pos, hidden)
        self.layers = nn.ModuleList(WSKANLayer(hidden, dropout, update_edges=(t < layers - 1)) for t in range(layers))
        self.head = nn.Sequential(
            nn.Linear((n_out + 1) * hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, n_targets)
        )

    def forward(self, batch: Batch) -> Tensor:
        src, dst = batch.edge_index
        n_nodes, n_graphs = batch.x.shape[0], batch.num_graphs
        h = self.node_in(batch.x) + self.pos(batch.node_pos)
        e = self.edge_in(batch.edge_attr)
        # counts by index_add of ones (exact integers): bincount would read its maximum back to the host
        in_degree = h.new_zeros(n_nodes, 1).index_add_(0, dst, h.new_ones(dst.shape[0], 1))
        for layer in self.layers:
            h, e = layer(h, e, src, dst, in_degree)
        outputs = output_states(h, batch.node_out, n_graphs, self.n_out)
        sizes = h.new_zeros(n_graphs, 1).index_add_(0, batch.batch, h.new_ones(n_nodes, 1))
        mean = h.new_zeros(n_graphs, h.shape[1]).index_add_(0, batch.batch, h) / sizes
        return self.head(torch.cat([outputs, mean], dim=1))


@dataclass(frozen=True)
class Settings:
    """``<section>.ws_kan`` of ``params.yaml``."""

    hidden: int = setting(64, gt=0, le=MAX_WIDTH)
    layers: int = setting(4, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)


INPUT_KIND = "graph"
LABEL = "WS-KAN"
REPORT_ORDER = 80


def build(s: Settings, shape: DataShape) -> WSKAN:
    """WS-KAN on the zoo's KAN-graphs."""
    return WSKAN(
        shape.node_dim,
        shape.edge_dim,
        shape.n_pos,
        shape.n_out,
        shape.n_classes,
        hidden=s.hidden,
        layers=s.layers,
        dropout=s.dropout,
    )
