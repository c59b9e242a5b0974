"""Neural graphs of CNN zoos: one graph format for every architecture of a zoo.

:func:`cnn_graph_set` turns a zoo batch of one :class:`~pipeline.zoo.cnn.CNNArch` into graphs
with :func:`~pipeline.graphs.neural_graph.graph_template` (a node per channel, kernels centred in
``K x K`` slots, residual connections as edges) and adds the activation-type code to the hidden
nodes' features; a zoo of several architectures passes one ``kernel_slot`` and ``hidden_slots``
for all of them, so that every graph has the same feature widths and positional ids, and
concatenates the sets (:meth:`~pipeline.graphs.store.GraphSet.concat`).

Node features: ``[bias, onehot(activation)]`` (zeros for the input channels, and no activation
code for the outputs); edge features: ``K * K`` kernel values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.weightspace.spec import Params
from pipeline.zoo.cnn import ACTIVATIONS, CNNArch, cnn_spec

ACTIVATION_CODES = tuple(sorted(ACTIVATIONS))


def cnn_graph_set(
    params: Params,
    arch: CNNArch,
    y: Tensor,
    net_id: Tensor,
    kernel_slot: int | None = None,
    hidden_slots: int | None = None,
) -> GraphSet:
    """Graphs of ``B`` nets of architecture ``arch`` (``params``: its zoo batch, ``(B, ...)``).

    Shapes: ``y`` ``(B, ...)`` targets, ``net_id`` ``(B,)`` -> a :class:`GraphSet` of ``B``
    graphs with node features ``(B N, 1 + len(ACTIVATION_CODES))`` and edge features
    ``(B E, K * K)``.
    """
    spec = cnn_spec(arch)
    template = graph_template(spec, kernel_slot, hidden_slots)
    graphs = GraphSet.from_params(params, template, y, net_id)
    hidden = (graphs.node_layer > 0) & (graphs.node_layer < spec.n_layers)
    code = torch.zeros(graphs.x.shape[0], len(ACTIVATION_CODES), dtype=graphs.x.dtype)
    code[hidden, ACTIVATION_CODES.index(arch.activation)] = 1.0
    graphs.x = torch.cat([graphs.x, code], dim=1)
    return graphs
