"""Collated storage of many neural graphs (one file per split), in PyG's ``InMemoryDataset`` style.

All graphs of a split are concatenated (node features ``(ΣN, F)``, edge features ``(ΣE, D)``,
local ``edge_index``) and located by ``node_ptr`` / ``edge_ptr`` slices, so heterogeneous graphs
fit the same format. :meth:`GraphSet.batch` collates any index set with a handful of vectorized
gathers (no per-graph Python work), which is what the training loop calls every step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from pipeline.graphs.neural_graph import GraphTemplate, features_to_params, params_to_features
from pipeline.io import CorruptFileError, load_tensors, save_tensors
from pipeline.weightspace.spec import Params


def _ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenation of ``arange(s, s + c)`` for every (start, count), vectorized."""
    total = int(counts.sum())
    offsets = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return torch.repeat_interleave(starts, counts) + torch.arange(total) - offsets


@dataclass
class GraphSet:
    """Many neural graphs, collated.

    Attributes (G graphs, ΣN nodes, ΣE edges):
        x: ``(ΣN, F)`` node features.  edge_attr: ``(ΣE, D)`` edge features.
        edge_index: ``(2, ΣE)`` node ids local to each graph.
        node_ptr, edge_ptr: ``(G + 1,)`` slice boundaries.
        node_layer, node_pos: ``(ΣN,)``.  edge_layer: ``(ΣE,)``.
        node_out: ``(ΣN,)`` bool, output neurons (read out by invariant models).
        y: ``(G,)`` labels or ``(G, ...)`` regression targets.  net_id: ``(G,)`` zoo ids.
    """

    x: Tensor
    edge_attr: Tensor
    edge_index: Tensor
    node_ptr: Tensor
    edge_ptr: Tensor
    node_layer: Tensor
    node_pos: Tensor
    edge_layer: Tensor
    node_out: Tensor
    y: Tensor
    net_id: Tensor

    def __len__(self) -> int:
        return int(self.node_ptr.numel() - 1)

    @staticmethod
    def from_params(params: Params, template: GraphTemplate, y: Tensor, net_id: Tensor) -> GraphSet:
        """Graphs of a homogeneous zoo batch (every net has ``template``'s topology)."""
        x, e = params_to_features(params, template)
        G, N, E = x.shape[0], template.n_nodes, template.n_edges
        last = template.spec.n_layers
        return GraphSet(
            x=x.reshape(G * N, -1),
            edge_attr=e.reshape(G * E, -1),
            edge_index=template.edge_index.repeat(1, G),
            node_ptr=torch.arange(G + 1) * N,
            edge_ptr=torch.arange(G + 1) * E,
            node_layer=template.node_layer.repeat(G),
            node_pos=template.node_pos.repeat(G),
            edge_layer=template.edge_layer.repeat(G),
            node_out=(template.node_layer == last).repeat(G),
            y=y,
            net_id=net_id.long(),
        )

    def to_params(self, template: GraphTemplate) -> Params:
        """The dense (weights, biases) view of every graph, for weight-space models (DWSNet, NFN)."""
        G = len(self)
        x = self.x.reshape(G, template.n_nodes, -1)
        e = self.edge_attr.reshape(G, template.n_edges, -1)
        return features_to_params(x, e, template)

    def batch(self, idx: Tensor) -> Batch:
        """Collate graphs ``idx`` into one PyG :class:`Batch` (node ids offset, ``batch`` vector set)."""
        idx = idx.long()
        n_counts = self.node_ptr[idx + 1] - self.node_ptr[idx]
        e_counts = self.edge_ptr[idx + 1] - self.edge_ptr[idx]
        nodes = _ranges(self.node_ptr[idx], n_counts)
        edges = _ranges(self.edge_ptr[idx], e_counts)
        new_ptr = torch.zeros(idx.numel() + 1, dtype=torch.long)
        new_ptr[1:] = torch.cumsum(n_counts, 0)
        shift = torch.repeat_interleave(new_ptr[:-1], e_counts)
        return Batch(
            x=self.x[nodes],
            edge_index=self.edge_index[:, edges] + shift,
            edge_attr=self.edge_attr[edges],
            node_layer=self.node_layer[nodes],
            node_pos=self.node_pos[nodes],
            edge_layer=self.edge_layer[edges],
            node_out=self.node_out[nodes],
            y=self.y[idx],
            batch=torch.repeat_interleave(torch.arange(idx.numel()), n_counts),
            ptr=new_ptr,
            num_graphs=idx.numel(),
        )

    def get(self, i: int) -> Data:
        """Graph ``i`` as a standalone :class:`torch_geometric.data.Data`."""
        b = self.batch(torch.tensor([i]))
        return Data(
            **{k: b[k] for k in ("x", "edge_index", "edge_attr", "node_layer", "node_pos", "edge_layer", "node_out")},
            y=b.y,
        )

    def save(self, path: str | Path) -> None:
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        tensors["node_out"] = tensors["node_out"].to(torch.uint8)
        save_tensors(path, tensors)

    @staticmethod
    def load(path: str | Path) -> GraphSet:
        """Load a split file; raises :class:`CorruptFileError` naming it on any inconsistency."""
        data = load_tensors(path)
        try:
            data["node_out"] = data["node_out"].bool()
            gs = GraphSet(**{f.name: data[f.name] for f in fields(GraphSet)})
        except (KeyError, TypeError) as e:
            raise CorruptFileError(f"{path}: not a graph set ({e})") from e
        if gs.node_ptr[-1] != gs.x.shape[0] or gs.edge_ptr[-1] != gs.edge_attr.shape[0]:
            raise CorruptFileError(f"{path}: slice pointers disagree with the stored tensors")
        return gs
