"""Neural graphs (Kofinas et al., 2024): a network as the graph of its computation.

Built from a :class:`~pipeline.weightspace.spec.ParamSpec` alone, so every family whose spec
tags its tensors as ``edge`` (two neuron axes) or ``node`` (one) gets a graph for free:

* one node per neuron of every layer ``0..L``; node ``(l, j)`` has id ``offset_l + j``;
* node features: the concatenated ``node`` tensors of that neuron (an MLP's bias; 0 for inputs);
* edges ``(l, i) -> (l+1, j)`` for every pair of neighbouring layers, ordered destination-major
  (all in-edges of a node are contiguous), feature = the concatenated ``edge`` tensors'
  entries for ``(i, j)`` (an MLP's ``W[j, i]``; a KAN's ``[coef_ij, scale_base_ij, scale_sp_ij]``),
  zero-padded to the widest layer;
* CNNs (Neural Graphs §2.2; a spec of family ``cnn``): one node per channel; an edge's feature is
  its kernel slice ``W[j, i]`` zero-padded, centred, to a ``K x K`` slot and flattened (``K`` the
  largest kernel, or a fixed ``kernel_slot`` shared by a zoo), the linear head as a ``1 x 1``
  kernel (the slot's centre); after the parameter edges, every identity residual connection
  (the spec's ``tied`` pairs ``(a, b)``) adds edges ``(a, i) -> (b, i)`` with a 1 at the centre;
* positional ids: one per input neuron, one shared by each hidden layer, one per output neuron.
  With ``hidden_slots`` above the number of hidden layers, the output ids come after that many
  hidden ids, so nets of different depths index their outputs alike (from the end).

Every net of a spec shares the topology (:class:`GraphTemplate`); only features differ, so a
zoo batch converts with a few reshapes, no Python loop over nets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pipeline.weightspace.spec import Params, ParamSpec, TensorSpec


@dataclass(frozen=True)
class _Slot:
    """Where one spec tensor lives in the node or edge feature matrix."""

    tensor: TensorSpec
    rows: tuple[int, int]  # node or edge index range
    cols: tuple[int, int]  # feature column range
    order: tuple[int, ...]  # permutation of per-net axes to (dst, src, *feat) or (neuron, *feat)
    centre: tuple[int, int] | None = None  # (k, K): a k x k kernel (k = 1: none) centred in a K x K slot


@dataclass(frozen=True)
class GraphTemplate:
    """Topology shared by every net of one spec.

    Attributes:
        edge_index: ``(2, E)`` long, rows (source, destination).
        node_layer: ``(N,)`` neuron layer of each node.
        edge_layer: ``(E,)`` parameter layer ``l`` of edge ``(l, i) -> (l+1, j)``; ``L`` for a
            residual edge.
        node_pos: ``(N,)`` positional id, ``< n_pos``.
        n_pos: number of positional ids, ``n_0 + hidden_slots + n_L`` (``hidden_slots = L - 1``
            unless given).
        node_dim, edge_dim: feature widths.
        edge_const: ``(E_res, edge_dim)`` features of the residual edges (the last ``E_res``
            edges), the same for every net.
    """

    spec: ParamSpec
    edge_index: Tensor
    node_layer: Tensor
    edge_layer: Tensor
    node_pos: Tensor
    n_pos: int
    node_dim: int
    edge_dim: int
    node_slots: tuple[_Slot, ...]
    edge_slots: tuple[_Slot, ...]
    edge_const: Tensor | None = None

    @property
    def n_nodes(self) -> int:
        return int(self.node_layer.numel())

    @property
    def n_edges(self) -> int:
        return int(self.edge_layer.numel())

    def to(self, device: torch.device | str) -> GraphTemplate:
        """The same template with its index tensors on ``device``."""
        return replace(
            self,
            edge_index=self.edge_index.to(device),
            node_layer=self.node_layer.to(device),
            edge_layer=self.edge_layer.to(device),
            node_pos=self.node_pos.to(device),
        )


def kernel_size(spec: ParamSpec) -> int:
    """The largest square kernel of a CNN spec (1 when it has none)."""
    return max([t.shape[-1] for t in spec.tensors if t.role == "edge" and len(t.shape) == 4] or [1])


def graph_template(spec: ParamSpec, kernel_slot: int | None = None, hidden_slots: int | None = None) -> GraphTemplate:
    """Topology and feature layout of the neural graph of ``spec``.

    Args:
        kernel_slot: ``K`` of a CNN's kernel slots (default: its largest kernel; a zoo of
            several architectures passes its largest). Ignored for other families.
        hidden_slots: hidden positional ids before the output ids (default ``L - 1``; a zoo of
            several depths passes its deepest).
    """
    sizes = spec.layer_sizes
    L = spec.n_layers
    hidden_slots = L - 1 if hidden_slots is None else hidden_slots
    if hidden_slots < L - 1:
        raise ValueError(f"hidden_slots {hidden_slots} is fewer than the {L - 1} hidden layers")
    cnn = spec.family == "cnn"
    K = (kernel_size(spec) if kernel_slot is None else kernel_slot) if cnn else 1
    if cnn and K < kernel_size(spec):
        raise ValueError(f"kernel_slot {K} is smaller than the largest kernel {kernel_size(spec)}")
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    node_layer = torch.cat([torch.full((s,), l, dtype=torch.long) for l, s in enumerate(sizes)])
    pos = []
    for l, s in enumerate(sizes):
        if l == 0:
            pos.append(torch.arange(s))
        elif l < L:
            pos.append(torch.full((s,), sizes[0] + l - 1))
        else:
            pos.append(torch.arange(s) + sizes[0] + hidden_slots)
    node_pos = torch.cat(pos)

    src, dst, edge_layer, edge_start = [], [], [], [0]
    for l in range(L):
        j, i = torch.meshgrid(torch.arange(sizes[l + 1]), torch.arange(sizes[l]), indexing="ij")
        src.append(i.reshape(-1) + offsets[l])
        dst.append(j.reshape(-1) + offsets[l + 1])
        edge_layer.append(torch.full((j.numel(),), l, dtype=torch.long))
        edge_start.append(edge_start[-1] + j.numel())

    node_slots, edge_slots = [], []
    node_cols = [0] * (L + 1)
    edge_cols = [0] * L
    for t in spec.tensors:
        neuron_axes = [a for a, layer in enumerate(t.axes) if layer is not None]
        feat_axes = [a for a, layer in enumerate(t.axes) if layer is None]
        width = 1
        for a in feat_axes:
            width *= t.shape[a]
        if t.role == "node":
            l = t.axes[neuron_axes[0]]
            cols = (node_cols[l], node_cols[l] + width)
            node_cols[l] += width
            node_slots.append(_Slot(t, (offsets[l], offsets[l + 1]), cols, (neuron_axes[0], *feat_axes)))
        else:
            a0, a1 = neuron_axes
            lo = min(t.axes[a0], t.axes[a1])
            if abs(t.axes[a0] - t.axes[a1]) != 1:
                raise ValueError(f"{t.name}: edge tensors must join neighbouring layers")
            dst_axis, src_axis = (a0, a1) if t.axes[a0] > t.axes[a1] else (a1, a0)
            centre = None
            if cnn:
                k = t.shape[feat_axes[-1]] if feat_axes else 1
                if len(feat_axes) not in (0, 2) or width != k * k:
                    raise ValueError(f"{t.name}: a CNN edge tensor holds a square kernel or a single weight")
                centre, width = (k, K), K * K
            cols = (edge_cols[lo], edge_cols[lo] + width)
            edge_cols[lo] += width
            slot = _Slot(t, (edge_start[lo], edge_start[lo + 1]), cols, (dst_axis, src_axis, *feat_axes), centre)
            edge_slots.append(slot)
    edge_dim = max(edge_cols)
    edge_const = None
    if spec.tied:  # identity residual edges (a, i) -> (b, i), a 1 at the slot's centre
        for a, b in spec.tied:
            lo, hi = min(a, b), max(a, b)
            src.append(torch.arange(sizes[lo]) + offsets[lo])
            dst.append(torch.arange(sizes[hi]) + offsets[hi])
            edge_layer.append(torch.full((sizes[lo],), L, dtype=torch.long))
        n_res = sum(sizes[a] for a, _ in spec.tied)
        edge_const = torch.zeros(n_res, edge_dim)
        edge_const[:, (K * K) // 2 if cnn else 0] = 1.0
    return GraphTemplate(
        spec=spec,
        edge_index=torch.stack([torch.cat(src), torch.cat(dst)]),
        node_layer=node_layer,
        edge_layer=torch.cat(edge_layer),
        node_pos=node_pos,
        n_pos=sizes[0] + hidden_slots + sizes[-1],
        node_dim=max(max(node_cols), 1),
        edge_dim=edge_dim,
        node_slots=tuple(node_slots),
        edge_slots=tuple(edge_slots),
        edge_const=edge_const,
    )


def _pad_to_slot(v: Tensor, k: int, K: int) -> Tensor:
    """``(B, R, k * k)`` kernels -> ``(B, R, K * K)``, each centred in a zero ``K x K`` slot."""
    o = (K - k) // 2
    return torch.nn.functional.pad(v.reshape(*v.shape[:2], k, k), (o, K - k - o, o, K - k - o)).flatten(2)


def _crop_slot(v: Tensor, k: int, K: int) -> Tensor:
    """Inverse of :func:`_pad_to_slot`: ``(B, R, K * K)`` -> the centred ``(B, R, k * k)``."""
    o = (K - k) // 2
    return v.reshape(*v.shape[:2], K, K)[:, :, o : o + k, o : o + k].reshape(*v.shape[:2], k * k)


def params_to_features(params: Params, template: GraphTemplate) -> tuple[Tensor, Tensor]:
    """Zoo batch -> node features ``(B, N, node_dim)`` and edge features ``(B, E, edge_dim)``."""
    B = next(iter(params.values())).shape[0]
    ref = next(iter(params.values()))
    x = ref.new_zeros(B, template.n_nodes, template.node_dim)
    e = ref.new_zeros(B, template.n_edges, template.edge_dim)
    for slots, out in ((template.node_slots, x), (template.edge_slots, e)):
        for s in slots:
            v = params[s.tensor.name].permute(0, *(a + 1 for a in s.order)).reshape(B, s.rows[1] - s.rows[0], -1)
            if s.centre is not None:
                v = _pad_to_slot(v, *s.centre)
            out[:, s.rows[0] : s.rows[1], s.cols[0] : s.cols[1]] = v
    if template.edge_const is not None:
        e[:, template.n_edges - template.edge_const.shape[0] :] = template.edge_const.to(e)
    return x, e


def features_to_params(x: Tensor, e: Tensor, template: GraphTemplate) -> Params:
    """Inverse of :func:`params_to_features`: ``(B, N, ·)``, ``(B, E, ·)`` -> zoo batch (residual
    edges carry no parameter and are skipped)."""
    B = x.shape[0]
    out: Params = {}
    for slots, feats in ((template.node_slots, x), (template.edge_slots, e)):
        for s in slots:
            t = s.tensor
            block = feats[:, s.rows[0] : s.rows[1], s.cols[0] : s.cols[1]]
            if s.centre is not None:
                block = _crop_slot(block, *s.centre)
            permuted_shape = [t.shape[a] for a in s.order]
            v = block.reshape(B, *permuted_shape)
            inverse = [0] * len(s.order)
            for k, a in enumerate(s.order):
                inverse[a] = k
            out[t.name] = v.permute(0, *(k + 1 for k in inverse)).contiguous()
    return {t.name: out[t.name] for t in template.spec.tensors}


@dataclass
class GraphBatch:
    """The attributes of a PyG ``Batch`` that graph metanetworks read (``B`` graphs, ``ΣN`` nodes)."""

    x: Tensor  # (ΣN, node_dim)
    edge_attr: Tensor  # (ΣE, edge_dim)
    edge_index: Tensor  # (2, ΣE) global node ids
    node_pos: Tensor  # (ΣN,)
    node_layer: Tensor  # (ΣN,)
    node_out: Tensor  # (ΣN,) bool
    batch: Tensor  # (ΣN,) graph of each node
    num_graphs: int


def uniform_batch(template: GraphTemplate, x: Tensor, e: Tensor) -> GraphBatch:
    """``B`` graphs of one topology as one batch: node features ``(B, N, ·)`` and edge features
    ``(B, E, ·)`` -> :class:`GraphBatch`. Built on the features' device with a few tensor
    operations (every size is known on the host: no synchronisation, no per-graph Python); the
    template's indices must be on that device too."""
    B, t = x.shape[0], template
    N, E = t.n_nodes, t.n_edges
    offsets = torch.arange(B, device=x.device) * N
    return GraphBatch(
        x=x.reshape(B * N, -1),
        edge_attr=e.reshape(B * E, -1),
        edge_index=(t.edge_index.unsqueeze(1) + offsets.view(1, B, 1)).reshape(2, B * E),
        node_pos=t.node_pos.repeat(B),
        node_layer=t.node_layer.repeat(B),
        node_out=(t.node_layer == t.spec.n_layers).repeat(B),
        batch=torch.arange(B, device=x.device).repeat_interleave(N),
        num_graphs=B,
    )
