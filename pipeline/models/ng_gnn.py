"""NG-GNN (Kofinas et al., 2024): PNA message passing on neural graphs with FiLM edge modulation.

Invariant to hidden-neuron permutations by construction: nodes of a hidden layer share one
positional embedding, messages are aggregated with symmetric functions, and the readout uses
only the (unpermutable) output neurons. The node and edge states of :class:`NGGNNEncoder` are
equivariant; :class:`NGGNN` reads them out invariantly, :class:`NGGNNEditor` turns them into
edited parameters (:class:`~pipeline.models.layers.GraphEditHead`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from pipeline.config import MAX_WIDTH, setting
from pipeline.graphs.neural_graph import GraphTemplate
from pipeline.models import DataShape
from pipeline.models.layers import (
    DegreeBuckets,
    FourierFeatures,
    GraphEditHead,
    GraphStates,
    TemplateBuckets,
    output_states,
)
from pipeline.models.probes import (
    ForwardSpec,
    make_probe_projection,
    make_probes,
    probe_variant,
    probe_variant_label,
)


class NGGNNLayer(nn.Module):
    r"""One PNA layer with FiLM edge modulation and an edge update.

    For an edge :math:`j \to i` (source ``j``, destination ``i``) with features :math:`e_{ij}`:

    .. math::
        [\gamma_{ij}, \beta_{ij}] = W_e e_{ij},\qquad
        m_{ij} = \gamma_{ij} \odot (A x_i + B x_j) + \beta_{ij}

        a_i = \bigoplus_{\text{mean,min,max,std}} m_{ij},\qquad
        s_i = [a_i,\ a_i \cdot \log(d_i + 1)/\delta]

        x_i' = x_i + \mathrm{Dropout}(\mathrm{SiLU}(\mathrm{LN}(W_o [x_i \Vert s_i])))

        e_{ij}' = e_{ij} + W_2\,\mathrm{SiLU}(\mathrm{LN}(e_{ij} + C x_j + D x_i))\quad\text{(if ``update_edges``)}

    ``A x`` and ``B x`` are computed per node and gathered per edge (the edge-level linear map
    over ``[x_i, x_j]`` of a plain PNA layer, at node cost). :math:`\delta` is the mean of
    :math:`\log(d+1)` over the training graphs (PNA's amplification scaler).

    Shapes: x ``(N, H)``, e ``(E, H)`` in :class:`DegreeBuckets` order, src/dst ``(E,)``.
    """

    def __init__(self, hidden: int, dropout: float, update_edges: bool, avg_log_degree: float):
        super().__init__()
        self.node_pair = nn.Linear(hidden, 2 * hidden)  # [A x, B x]
        self.film = nn.Linear(hidden, 2 * hidden)
        self.post = nn.Linear(hidden + 8 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.delta = avg_log_degree
        self.update_edges = update_edges
        if update_edges:
            self.edge_pair = nn.Linear(hidden, 2 * hidden, bias=False)  # [C x, D x]
            self.edge_norm = nn.LayerNorm(hidden)
            self.edge_out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, e: Tensor, src: Tensor, dst: Tensor, buckets: DegreeBuckets) -> tuple[Tensor, Tensor]:
        H = x.shape[1]
        ax, bx = self.node_pair(x).split(H, dim=1)
        gamma, beta = self.film(e).split(H, dim=1)
        agg = buckets.aggregate(ax, bx.index_select(0, src), gamma, beta)
        amp = (torch.log1p(buckets.degree.to(x.dtype)) / self.delta).unsqueeze(1)
        h = self.post(torch.cat([x, agg, agg * amp], dim=1))
        x = x + self.drop(nn.functional.silu(self.norm(h)))
        if self.update_edges:
            cx, dx = self.edge_pair(x).split(H, dim=1)
            e = e + self.edge_out(
                nn.functional.silu(self.edge_norm(e + cx.index_select(0, src) + dx.index_select(0, dst)))
            )
        return x, e


class NGGNNEncoder(nn.Module):
    r"""The equivariant trunk of NG-GNN: a batch of neural graphs -> node and edge states.

    .. math::
        x^0_v = W_x\,\gamma(f_v) + P[\mathrm{pos}(v)],\qquad e^0_{uv} = W_e\,\gamma(w_{uv}),\qquad
        x^{t+1}, e^{t+1} = \mathrm{Layer}_t(x^t, e^t)

    with :math:`\gamma` random Fourier features of the scalar node/edge features and
    :math:`P` the positional embedding table (own row per input and output neuron, one row
    shared by each hidden layer); ``positional=False`` drops :math:`P` (the paper's ablation:
    the input and output neurons become interchangeable too). With ``probe_features = M > 0``,
    :math:`f_v` also holds the neuron's activations at ``M`` learned input points
    (:class:`~pipeline.models.probes.ProbeFeatures`); with ``probe_projection`` they are instead
    projected per layer and added to :math:`x^0_v` (:class:`~pipeline.models.probes.ProbeProjection`,
    the reference code's way). Every layer but the last updates the edges.

    With a ``template``, the PNA degree buckets of a batch of ``G`` graphs of that topology
    come from :class:`~pipeline.models.layers.TemplateBuckets` (made on the device from ``G``,
    no host synchronisation); other batches (no template, or node / edge counts that are not
    ``G`` times the template's) fall back to :meth:`~pipeline.models.layers.DegreeBuckets.build`
    on the data, which reads nothing back either when the batch carries its in-degree histogram
    (a batch of several architectures from :meth:`~pipeline.graphs.store.GraphSet.batches`).
    Every path gives the same buckets.

    Args: as :class:`NGGNN` (without ``n_classes``).
    Shapes: a PyG :class:`Batch` -> :class:`~pipeline.models.layers.GraphStates` (``H = hidden``;
    edge states in PNA degree-bucket order, given by ``edge_order``).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        n_pos: int,
        n_out: int,
        *,
        hidden: int = 32,
        layers: int = 4,
        dropout: float = 0.0,
        fourier_features: int = 16,
        fourier_scale: float = 3.0,
        avg_log_degree: float = 1.0,
        probe_features: int = 0,
        forward_spec: ForwardSpec | None = None,
        template: GraphTemplate | None = None,
        positional: bool = True,
        probe_projection: bool = False,
    ):
        super().__init__()
        self.buckets = None if template is None else TemplateBuckets(template)
        self.node_ff = FourierFeatures(node_dim, fourier_features, fourier_scale, seed=1)
        self.edge_ff = FourierFeatures(edge_dim, fourier_features, fourier_scale, seed=2)
        self.probes = make_probes(probe_features, n_pos, n_out, forward_spec)
        self.probe_proj = make_probe_projection(probe_features, forward_spec, hidden, probe_projection)
        concat = probe_features if self.probe_proj is None else 0
        self.node_in = nn.Linear(self.node_ff.out_dim + concat, hidden)
        self.edge_in = nn.Linear(self.edge_ff.out_dim, hidden)
        self.pos = nn.Embedding(n_pos, hidden) if positional else None
        self.layers = nn.ModuleList(
            NGGNNLayer(hidden, dropout, update_edges=(k < layers - 1), avg_log_degree=avg_log_degree)
            for k in range(layers)
        )

    def degree_buckets(self, batch: Batch, template: TemplateBuckets | None = None) -> DegreeBuckets:
        """The batch's PNA buckets: from ``template`` (else the model's own) when the batch is
        copies of it, else from the data and the in-degree histogram a batch of several
        architectures carries (:class:`~pipeline.graphs.store.BatchLayout`)."""
        n, E, G = batch.x.shape[0], batch.edge_index.shape[1], batch.num_graphs
        template = template if template is not None else self.buckets
        if template is not None and template.matches(n, E, G):
            return template(G)
        return DegreeBuckets.build(batch.edge_index[1], n, getattr(batch, "in_degrees", None))

    def forward(self, batch: Batch, template: TemplateBuckets | None = None) -> GraphStates:
        """``template``: the buckets of the topology this batch copies, when the model has none
        of its own (a learned optimizer's encoder, whose optimizees change)."""
        src, dst = batch.edge_index
        buckets = self.degree_buckets(batch, template)
        order = buckets.edge_order
        src, dst = src[order], dst[order]
        feats = self.node_ff(batch.x)
        probes = None if self.probes is None else self.probes(batch)
        if probes is not None and self.probe_proj is None:
            feats = torch.cat([feats, probes], dim=1)
        x = self.node_in(feats)
        if self.probe_proj is not None:
            x = x + self.probe_proj(probes, batch.node_layer)
        if self.pos is not None:
            x = x + self.pos(batch.node_pos)
        e = self.edge_in(self.edge_ff(batch.edge_attr[order]))
        for layer in self.layers:
            x, e = layer(x, e, src, dst, buckets)
        return GraphStates(x, e, src, dst, order)


class NGGNN(nn.Module):
    r"""NG-GNN classifier of neural graphs.

    .. math::
        x^T, e^T = \mathrm{Encoder}(G),\qquad \hat y = \mathrm{MLP}([x^T_o]_{o \in \text{outputs}})

    :class:`NGGNNEncoder`, then the output neurons' states concatenated and a two-layer MLP.

    Args:
        node_dim, edge_dim: raw feature widths of the graphs.
        n_pos: number of positional ids.  n_out: output neurons read out.  n_classes: logits.
        hidden, layers, dropout: width, depth, dropout.
        fourier_features, fourier_scale: ``F`` and ``sigma`` of :class:`FourierFeatures`.
        avg_log_degree: PNA's :math:`\delta` from the training graphs.
        probe_features: ``M`` learned probe points (0: none); needs ``forward_spec``.
        template: the zoo's graph topology, for degree buckets without host synchronisation
            (:class:`NGGNNEncoder`); ``None`` reads them from every batch.
        positional: add the positional embeddings (``False``: the ablation).
        probe_projection: probe values enter through per-layer ``Linear + LayerNorm`` maps added to
            the node embedding (the reference code) instead of concatenated to the node features.
    Shapes: a PyG :class:`Batch` of ``B`` graphs -> logits ``(B, n_classes)``.
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
        hidden: int = 32,
        layers: int = 4,
        dropout: float = 0.0,
        fourier_features: int = 16,
        fourier_scale: float = 3.0,
        avg_log_degree: float = 1.0,
        probe_features: int = 0,
        forward_spec: ForwardSpec | None = None,
        template: GraphTemplate | None = None,
        positional: bool = True,
        probe_projection: bool = False,
    ):
        super().__init__()
        self.encoder = NGGNNEncoder(
            node_dim,
            edge_dim,
            n_pos,
            n_out,
            hidden=hidden,
            layers=layers,
            dropout=dropout,
            fourier_features=fourier_features,
            fourier_scale=fourier_scale,
            avg_log_degree=avg_log_degree,
            probe_features=probe_features,
            forward_spec=forward_spec,
            template=template,
            positional=positional,
            probe_projection=probe_projection,
        )
        self.n_out = n_out
        self.head = nn.Sequential(
            nn.Linear(n_out * hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, batch: Batch) -> Tensor:
        x = self.encoder(batch).x
        return self.head(output_states(x, batch.node_out, batch.num_graphs, self.n_out))


class NGGNNEditor(nn.Module):
    r"""NG-GNN for weight-space editing: :class:`NGGNNEncoder`, then :class:`GraphEditHead`.

    .. math:: \theta' = \theta + \alpha\,\mathrm{vec}(\Delta(x^T, e^T))

    Equivariant: permuting the hidden neurons of the input permutes the edited parameters alike.

    Args:
        template: the graph topology of the zoo (every batch must share it); gives the feature
            widths, positional ids and output neurons.
        hidden, layers, dropout, fourier_features, fourier_scale, avg_log_degree, probe_features,
        forward_spec, positional, probe_projection: as :class:`NGGNN`.
        init_scale: initial residual scale :math:`\alpha_0`.
    Shapes: a PyG :class:`Batch` of ``B`` graphs -> edited parameters ``(B, P)`` in
    :func:`~pipeline.weightspace.spec.flatten` order (in the graphs' normalization).
    """

    input_kind = "graph"

    def __init__(
        self,
        template: GraphTemplate,
        *,
        hidden: int = 32,
        layers: int = 4,
        dropout: float = 0.0,
        fourier_features: int = 16,
        fourier_scale: float = 3.0,
        avg_log_degree: float = 1.0,
        probe_features: int = 0,
        forward_spec: ForwardSpec | None = None,
        init_scale: float = 1e-3,
        positional: bool = True,
        probe_projection: bool = False,
    ):
        super().__init__()
        t = template
        self.encoder = NGGNNEncoder(
            t.node_dim,
            t.edge_dim,
            t.n_pos,
            t.spec.layer_sizes[-1],
            hidden=hidden,
            layers=layers,
            dropout=dropout,
            fourier_features=fourier_features,
            fourier_scale=fourier_scale,
            avg_log_degree=avg_log_degree,
            probe_features=probe_features,
            forward_spec=forward_spec,
            template=template,
            positional=positional,
            probe_projection=probe_projection,
        )
        self.head = GraphEditHead(template, hidden, init_scale)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.encoder(batch), batch)


@dataclass(frozen=True)
class Settings:
    """``<section>.ng_gnn`` of ``params.yaml``."""

    hidden: int = setting(32, gt=0, le=MAX_WIDTH)
    layers: int = setting(4, gt=0)
    dropout: float = setting(0.0, ge=0, lt=1)
    fourier_features: int = setting(16, ge=0)
    fourier_scale: float = setting(3.0, gt=0)
    probe_features: int = setting(0, ge=0)  # M learned input points run through every INR (0 = none)
    positional: bool = True  # positional embeddings of the neurons (False: the paper's ablation)
    probe_projection: bool = False  # probes: per-layer Linear + LayerNorm, added (the reference code)


INPUT_KIND = "graph"
LABEL = "NG-GNN"
REPORT_ORDER = 60
ANY_ARCHITECTURE = True  # reads graphs of several architectures (no single spec needed)


def variant(settings: dict) -> str:
    """The published number's variant: ``"probes"``, ``"no_pos"`` (the ablation), both, or none."""
    parts = [probe_variant(settings)] + ["no_pos"] * (not settings.get("positional", True))
    return "+".join(p for p in parts if p)


def variant_label(settings: dict) -> str:
    """``"16 probe features"``, ``"no positional embeddings"``, both, or nothing."""
    words = [probe_variant_label(settings)] + ["no positional embeddings"] * (not settings.get("positional", True))
    return ", ".join(w for w in words if w)


def build(s: Settings, shape: DataShape) -> NGGNN:
    """NG-GNN on the zoo's neural graphs."""
    return NGGNN(
        shape.node_dim,
        shape.edge_dim,
        shape.n_pos,
        shape.n_out,
        shape.n_classes,
        hidden=s.hidden,
        layers=s.layers,
        dropout=s.dropout,
        fourier_features=s.fourier_features,
        fourier_scale=s.fourier_scale,
        avg_log_degree=shape.avg_log_degree,
        probe_features=s.probe_features,
        forward_spec=shape.forward_spec,
        template=shape.template,
        positional=s.positional,
        probe_projection=s.probe_projection,
    )


def build_editor(s: Settings, shape: DataShape, init_scale: float) -> NGGNNEditor:
    """NG-GNN with node / edge editing heads on the zoo's neural graphs."""
    return NGGNNEditor(
        shape.template,
        hidden=s.hidden,
        layers=s.layers,
        dropout=s.dropout,
        fourier_features=s.fourier_features,
        fourier_scale=s.fourier_scale,
        avg_log_degree=shape.avg_log_degree,
        probe_features=s.probe_features,
        forward_spec=shape.forward_spec,
        init_scale=init_scale,
        positional=s.positional,
        probe_projection=s.probe_projection,
    )
