"""Probe features (Neural Graphs §3): the input network's own activations at learned points.

``M`` learned input points are pushed through every network of a batch *on its neural
graph*: layer by layer, each node sums its in-edges' weights times the source activations,
adds its bias and applies the network's activation. Every node then carries its activations
at the ``M`` points as extra features. They move with their neuron under any permutation, so
invariance and equivariance are kept by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch


@dataclass(frozen=True)
class ForwardSpec:
    """How to run the networks of a zoo from their normalized graphs.

    Attributes:
        activation: hidden activation, ``"sin"`` (SIREN: ``sin(omega0 z)``) or ``"relu"``.
        omega0: SIREN frequency.  output_offset: constant added to the output.
        weight_stats, bias_stats: per parameter layer ``l`` the ``(mean, std)`` used to normalize
            ``W_l`` and ``b_l`` (the graph's edge / node features of layer ``l``/``l+1``).
    """

    activation: str
    omega0: float
    output_offset: float
    weight_stats: tuple[tuple[float, float], ...]
    bias_stats: tuple[tuple[float, float], ...]


class ProbeFeatures(nn.Module):
    r"""Activations of every neuron at ``M`` learned input points.

    .. math::
        h_v = p_{m,\mathrm{pos}(v)}\ (\text{input } v),\qquad
        h_v = \sigma\Big(\sum_{u \to v} w_{uv} h_u + b_v\Big)\ (\text{others; identity at the output})

    with raw weights and biases recovered from the normalized features (:class:`ForwardSpec`).

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
        inputs = batch.node_layer == 0
        h = torch.zeros(n, M, dtype=batch.x.dtype)
        h = h.index_put((inputs.nonzero().squeeze(1),), self.points.t()[batch.node_pos[inputs]])
        for l in range(self.n_layers):
            e = (batch.edge_layer == l).nonzero().squeeze(1)
            z = torch.zeros(n, M, dtype=h.dtype).index_add(0, dst[e], w[e].unsqueeze(1) * h[src[e]])
            nodes = (batch.node_layer == l + 1).nonzero().squeeze(1)
            z_nodes = z[nodes] + b[nodes].unsqueeze(1)
            out = self._act(z_nodes) if l + 1 < self.n_layers else z_nodes + self.spec.output_offset
            h = h.index_put((nodes,), out)
        return h


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
