"""Probe features (Neural Graphs §3): the input network's own activations at learned points.

``M`` learned input points are pushed through every network of a batch *on its neural
graph*: layer by layer, each node sums its in-edges' weights times the source activations,
adds its bias and applies the network's activation. Every node then carries its activations
at the ``M`` points as extra features. They move with their neuron under any permutation, so
invariance and equivariance are kept by construction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from pipeline.weightspace.forward import ForwardSpec


class ProbeFeatures(nn.Module):
    r"""Activations of every neuron at ``M`` learned input points.

    .. math::
        h_v = p_{m,\mathrm{pos}(v)}\ (\text{input } v),\qquad
        h_v = \sigma\Big(\sum_{u \to v} w_{uv} h_u + b_v\Big)\ (\text{others; identity at the output})

    with raw weights and biases recovered from the normalized features (:class:`ForwardSpec`).
    Layer by layer with fixed-size tensors and layer masks (no ``nonzero``), so it runs on any
    device without host synchronisation.

    Shapes: a batch of MLP neural graphs (``N`` nodes, scalar node/edge features) -> ``(N, M)``.
    """

    def __init__(self, n_probes: int, in_dim: int, forward_spec: ForwardSpec, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.points = nn.Parameter(torch.rand(n_probes, in_dim, generator=g) * 2 - 1)
        self.spec = forward_spec
        L = len(forward_spec.weight_stats)
        self.register_buffer("w_mean", torch.tensor([s[0] for s in forward_spec.weight_stats]))
        self.register_buffer("w_std", torch.tensor([s[1] for s in forward_spec.weight_stats]))
        # node layer 0 (inputs) has no bias
        self.register_buffer("b_mean", torch.tensor([0.0] + [s[0] for s in forward_spec.bias_stats]))
        self.register_buffer("b_std", torch.tensor([1.0] + [s[1] for s in forward_spec.bias_stats]))
        self.n_layers = L

    def _act(self, z: Tensor) -> Tensor:
        if self.spec.activation == "sin":
            return torch.sin(self.spec.omega0 * z)
        return torch.relu(z)

    def forward(self, batch: Batch) -> Tensor:
        src, dst = batch.edge_index
        w = batch.edge_attr[:, 0] * self.w_std[batch.edge_layer] + self.w_mean[batch.edge_layer]
        b = batch.x[:, 0] * self.b_std[batch.node_layer] + self.b_mean[batch.node_layer]
        n, M = batch.x.shape[0], self.points.shape[0]
        # fixed-size tensors and masks only (no nonzero(): no host synchronisation). Layer l's sums
        # run over every edge: a node of layer l + 1 has only layer-l in-edges, so its sum has the
        # same terms in the same order; the other rows are discarded by the layer mask.
        inputs = (batch.node_layer == 0).unsqueeze(1)
        pos = torch.where(inputs.squeeze(1), batch.node_pos, 0)
        h = torch.where(inputs, self.points.t()[pos], 0.0).to(batch.x.dtype)
        for l in range(self.n_layers):
            z = torch.zeros(n, M, dtype=h.dtype, device=h.device).index_add(0, dst, w.unsqueeze(1) * h[src])
            z = z + b.unsqueeze(1)
            out = self._act(z) if l + 1 < self.n_layers else z + self.spec.output_offset
            h = torch.where((batch.node_layer == l + 1).unsqueeze(1), out, h)
        return h


class ProbeProjection(nn.Module):
    r"""The Neural Graphs reference code's entry of probe values into the node states: one
    ``Linear + LayerNorm`` per node layer, added to the node embedding (instead of concatenated
    to the node features before it).

    .. math:: x^0_v \mathrel{+}= \mathrm{LN}_{\ell(v)}\big(W_{\ell(v)} h_v + c_{\ell(v)}\big)

    with :math:`\ell(v)` the node's layer (0 = inputs). The maps are per layer, shared by the
    neurons of a layer, so a permutation of hidden neurons permutes the output rows alike.

    Shapes: probe values ``(N, M)``, node layers ``(N,)`` -> ``(N, H)``.
    """

    def __init__(self, n_probes: int, n_node_layers: int, hidden: int):
        super().__init__()
        self.maps = nn.ModuleList(
            nn.Sequential(nn.Linear(n_probes, hidden), nn.LayerNorm(hidden)) for _ in range(n_node_layers)
        )

    def forward(self, h: Tensor, node_layer: Tensor) -> Tensor:
        out = self.maps[0](h)
        for layer in range(1, len(self.maps)):
            out = torch.where((node_layer == layer).unsqueeze(1), self.maps[layer](h), out)
        return out


def make_probe_projection(
    n_probes: int, forward_spec: ForwardSpec | None, hidden: int, project: bool
) -> ProbeProjection | None:
    """:class:`ProbeProjection` when ``project`` and probes are on, else ``None`` (probe values
    are then concatenated to the node features)."""
    if not project or n_probes <= 0 or forward_spec is None:
        return None
    return ProbeProjection(n_probes, len(forward_spec.weight_stats) + 1, hidden)


def make_probes(n_probes: int, n_pos: int, n_out: int, forward_spec: ForwardSpec | None) -> ProbeFeatures | None:
    """:class:`ProbeFeatures` for a neural-graph encoder, or ``None`` for ``n_probes == 0``.

    The input width is the positional ids less the output ids and the one shared id per hidden
    layer (:class:`~pipeline.graphs.neural_graph.GraphTemplate`).
    """
    if n_probes <= 0:
        return None
    if forward_spec is None:
        raise ValueError("probe features need the zoo's forward spec (activation, normalization)")
    n_in = n_pos - n_out - (len(forward_spec.weight_stats) - 1)
    return ProbeFeatures(n_probes, n_in, forward_spec)


def probe_variant(settings: dict) -> str:
    """A graph model's report variant: ``"probes"`` with probe features (the papers publish
    those numbers separately), else none."""
    return "probes" if settings.get("probe_features", 0) > 0 else ""


def probe_variant_label(settings: dict) -> str:
    """``"16 probe features"`` (or nothing): how the report names the variant."""
    n = settings.get("probe_features", 0)
    return f"{n} probe features" if n > 0 else ""
