"""Collated storage of many neural graphs (one file per split), in PyG's ``InMemoryDataset`` style.

All graphs of a split are concatenated (node features ``(ΣN, F)``, edge features ``(ΣE, D)``,
local ``edge_index``) and located by ``node_ptr`` / ``edge_ptr`` slices, so heterogeneous graphs
fit the same format. :meth:`GraphSet.batch` collates any index set with a handful of vectorized
gathers (no per-graph Python work), which is what the training loop calls every step. A set can
live on any device (:meth:`GraphSet.to`) and batching never waits for it: when every graph has the
same node and edge counts (a zoo's graphs share one template) every size follows from the batch
size, and a set of several architectures keeps each graph's sizes and in-degree histogram on the
host (:class:`BatchLayout`, :meth:`GraphSet.batches`). A pickled set (what Ray puts in its object
store) holds a shared template's structure once (:meth:`GraphSet.__getstate__`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from pipeline.device import from_host
from pipeline.graphs.neural_graph import GraphTemplate, features_to_params, params_to_features
from pipeline.io import (
    CorruptFileError,
    file_sha256,
    fingerprint,
    load_tensors,
    read_json,
    save_tensors,
    staged_dir,
    write_json,
)
from pipeline.weightspace.spec import Params


def _ranges(starts: Tensor, counts: Tensor, total: int) -> Tensor:
    """Concatenation of ``arange(s, s + c)`` for every (start, count), vectorized (``total = Σ c``)."""
    offsets = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts, output_size=total)
    firsts = torch.repeat_interleave(starts, counts, output_size=total)
    return firsts + torch.arange(total, device=starts.device) - offsets


# the structure tensors, per node and per edge (in graphs of one template: G copies of the template's own)
NODE_STRUCTURE = ("node_layer", "node_pos", "node_out")
EDGE_STRUCTURE = ("edge_index", "edge_layer")


def _uniform_sizes(node_ptr: Tensor, edge_ptr: Tensor) -> tuple[int, int] | None:
    """``(N, E)`` if every graph has ``N`` nodes and ``E`` edges, else ``None`` (also for no graphs,
    or pointers on the ``meta`` device, which hold no values). Reads the pointers: call once per set."""
    if node_ptr.numel() < 2 or edge_ptr.numel() != node_ptr.numel() or node_ptr.device.type == "meta":
        return None
    n, e = node_ptr.diff(), edge_ptr.diff()
    if bool((n == n[0]).all()) and bool((e == e[0]).all()):
        return int(n[0]), int(e[0])
    return None


@dataclass(frozen=True)
class BatchLayout:
    """What a batch of graphs of several architectures needs to know on the host, so that
    collating it (:meth:`GraphSet.batch`) and grouping its edges by in-degree
    (:meth:`~pipeline.models.layers.DegreeBuckets.build`) read nothing back from the device.

    Attributes:
        n_nodes, n_edges: the batch's total node and edge counts.
        in_degrees: ``(d, count)`` for every in-degree ``d`` its nodes have (``0`` included),
            ascending: how many of the batch's nodes have ``d`` in-edges.
    """

    n_nodes: int
    n_edges: int
    in_degrees: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _HostSizes:
    """Per-graph sizes of a set of several architectures, on the CPU (read once, when first needed):
    node counts ``(G,)``, edge counts ``(G,)`` and in-degree histograms ``(G, D + 1)`` (entry
    ``[g, d]``: graph ``g``'s nodes with ``d`` in-edges)."""

    nodes: Tensor
    edges: Tensor
    in_degrees: Tensor

    @staticmethod
    def of(node_ptr: Tensor, edge_ptr: Tensor, edge_index: Tensor) -> _HostSizes:
        nodes, edges = node_ptr.diff(), edge_ptr.diff()
        G, total = nodes.numel(), int(node_ptr[-1])
        graph_of_edge = torch.repeat_interleave(torch.arange(G), edges)
        degree = torch.zeros(total, dtype=torch.long).index_add_(
            0, node_ptr[:-1][graph_of_edge] + edge_index[1], torch.ones_like(graph_of_edge)
        )  # every node's in-degree (edge_index is local to each graph)
        D = int(degree.max()) if total else 0
        hist = torch.zeros(G * (D + 1), dtype=torch.long).index_add_(
            0, torch.repeat_interleave(torch.arange(G), nodes) * (D + 1) + degree, torch.ones_like(degree)
        )
        return _HostSizes(nodes, edges, hist.view(G, D + 1))

    def layout(self, idx: Tensor) -> BatchLayout:
        """The layout of the batch of graphs ``idx`` (a CPU tensor)."""
        hist = self.in_degrees[idx].sum(0)
        degrees = torch.nonzero(hist).flatten()
        return BatchLayout(
            int(self.nodes[idx].sum()),
            int(self.edges[idx].sum()),
            tuple(zip(degrees.tolist(), hist[degrees].tolist(), strict=True)),
        )


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

    Python-side, :attr:`uniform_sizes` is ``(N, E)`` when every graph has ``N`` nodes and ``E``
    edges (read from the pointers once, at construction; kept by :meth:`to`), else ``None``; a
    set of several architectures made on the CPU also keeps its per-graph sizes there
    (:class:`_HostSizes`, made on the first :meth:`layout` or :meth:`to`), so its batches read no
    sizes back from another device.
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

    def __post_init__(self) -> None:
        self.uniform_sizes = _uniform_sizes(self.node_ptr, self.edge_ptr)
        self._host_sizes: _HostSizes | None = None  # made by layout() or to(), from a CPU set

    def __len__(self) -> int:
        return int(self.node_ptr.numel() - 1)

    def shared_structure(self) -> dict[str, Tensor] | None:
        """The first graph's structure tensors (:data:`NODE_STRUCTURE`, :data:`EDGE_STRUCTURE`) when
        every graph repeats them (one template), else ``None``. Reads values: not for a step."""
        if self.uniform_sizes is None:
            return None
        (N, E), G = self.uniform_sizes, len(self)
        first = {k: getattr(self, k)[..., :N] for k in NODE_STRUCTURE} | {
            k: getattr(self, k)[..., :E] for k in EDGE_STRUCTURE
        }
        for k, one in first.items():
            every = getattr(self, k).unflatten(-1, (G, -1))
            if not bool((every == one.unsqueeze(-2)).all()):
                return None
        return {k: v.clone() for k, v in first.items()}  # a clone: a view would pickle the whole storage

    def __getstate__(self) -> dict:
        """Pickled state: graphs of one template keep their structure once, with the graph count
        to repeat it by (:meth:`__setstate__`): for a SIREN zoo's graph split about 1/7 of the bytes,
        what Ray copies into its object store and to every node. Other sets pickle as they are."""
        state = dict(self.__dict__)
        shared = self.shared_structure() if self.node_ptr.device.type != "meta" else None
        if shared is not None:
            state |= shared | {"_repeat_structure": len(self)}
        return state

    def __setstate__(self, state: dict) -> None:
        """The set :meth:`__getstate__` pickled, every structure tensor repeated back (the same
        values, contiguous, as before pickling)."""
        state = dict(state)
        G = state.pop("_repeat_structure", None)
        if G is not None:
            for k in NODE_STRUCTURE + EDGE_STRUCTURE:
                state[k] = state[k].repeat(*([1] * (state[k].dim() - 1)), G)
        self.__dict__.update(state)

    def to(self, device: torch.device | str) -> GraphSet:
        """Every tensor moved to ``device`` (Python-side constants such as :attr:`uniform_sizes` kept),
        so that a whole split can live there and :meth:`batch` gathers on it. A CPU set of several
        architectures first records its per-graph sizes on the host (for :meth:`layout`)."""
        self._sizes_on_host()
        out = copy.copy(self)
        for f in fields(self):
            setattr(out, f.name, getattr(self, f.name).to(device))
        return out

    @staticmethod
    def from_params(params: Params, template: GraphTemplate, y: Tensor, net_id: Tensor) -> GraphSet:
        """Graphs of a homogeneous zoo batch (every net has ``template``'s topology)."""
        x, e = params_to_features(params, template)
        G, N, E = x.shape[0], template.n_nodes, template.n_edges
        last = template.spec.n_layers
        t = template.to(x.device)
        return GraphSet(
            x=x.reshape(G * N, -1),
            edge_attr=e.reshape(G * E, -1),
            edge_index=t.edge_index.repeat(1, G),
            node_ptr=torch.arange(G + 1, device=x.device) * N,
            edge_ptr=torch.arange(G + 1, device=x.device) * E,
            node_layer=t.node_layer.repeat(G),
            node_pos=t.node_pos.repeat(G),
            edge_layer=t.edge_layer.repeat(G),
            node_out=(t.node_layer == last).repeat(G),
            y=y,
            net_id=net_id.long(),
        )

    @staticmethod
    def concat(sets: list[GraphSet]) -> GraphSet:
        """One set of the graphs of ``sets`` in order (e.g. the architectures of a zoo); node and
        edge feature widths must agree."""
        if not sets:
            raise ValueError("no graph sets to concatenate")
        ptrs = {}
        for name, size in (("node_ptr", "x"), ("edge_ptr", "edge_attr")):
            offsets = torch.cumsum(torch.tensor([0] + [getattr(g, size).shape[0] for g in sets[:-1]]), 0)
            ptrs[name] = torch.cat(
                [getattr(sets[0], name)[:1]] + [getattr(g, name)[1:] + o for g, o in zip(sets, offsets, strict=True)]
            )
        rest = {
            f.name: torch.cat([getattr(g, f.name) for g in sets], dim=-1 if f.name == "edge_index" else 0)
            for f in fields(GraphSet)
            if f.name not in ptrs
        }
        return GraphSet(**rest, **ptrs)

    def to_params(self, template: GraphTemplate) -> Params:
        """The dense (weights, biases) view of every graph, for weight-space models (DWSNet, NFN)."""
        G = len(self)
        x = self.x.reshape(G, template.n_nodes, -1)
        e = self.edge_attr.reshape(G, template.n_edges, -1)
        return features_to_params(x, e, template)

    def _sizes_on_host(self) -> _HostSizes | None:
        if self._host_sizes is None and self.uniform_sizes is None and self.node_ptr.device.type == "cpu" and len(self):
            self._host_sizes = _HostSizes.of(self.node_ptr, self.edge_ptr, self.edge_index)
        return self._host_sizes

    def layout(self, idx: Tensor) -> BatchLayout | None:
        """The host-side layout of the batch of graphs ``idx`` (a CPU tensor) when the set holds
        several architectures and knows its sizes on the host; ``None`` for graphs of one template
        (:attr:`uniform_sizes` says it all) or a set made on another device."""
        sizes = self._sizes_on_host()
        return None if sizes is None else sizes.layout(idx)

    def batches(self, order: Tensor, batch_size: int) -> Iterator[tuple[Batch, Tensor]]:
        """``(batch, labels)`` for consecutive runs of ``batch_size`` graphs of ``order`` (a CPU
        tensor: an epoch's shuffle, or ``arange`` for evaluation). ``order`` moves to the set's
        device once; each batch's sizes come from the host (:meth:`layout`), so no batch waits for
        the device."""
        on_device = from_host(order, self.y.device)
        for start in range(0, order.numel(), batch_size):
            idx = on_device[start : start + batch_size]
            yield self.batch(idx, self.layout(order[start : start + batch_size])), self.y[idx]

    def batch(self, idx: Tensor, layout: BatchLayout | None = None) -> Batch:
        """Collate graphs ``idx`` ``(B,)`` into one PyG :class:`Batch` (node ids offset, ``batch`` vector set).

        Runs on the set's device (``idx`` is moved there). With :attr:`uniform_sizes` every size is
        known from ``B`` alone; for graphs of several architectures from ``layout`` (this batch's
        :meth:`layout`, which the batch carries on as ``in_degrees`` for the degree buckets of
        :class:`~pipeline.models.layers.DegreeBuckets`). Either way no host synchronisation; without
        a layout the total node and edge counts are read back (one synchronisation off the CPU).
        """
        idx = idx.to(device=self.node_ptr.device, dtype=torch.long, non_blocking=True)
        B, dev = idx.numel(), idx.device
        if self.uniform_sizes is not None:
            N, E = self.uniform_sizes
            nodes = (self.node_ptr[idx].unsqueeze(1) + torch.arange(N, device=dev)).reshape(-1)
            edges = (self.edge_ptr[idx].unsqueeze(1) + torch.arange(E, device=dev)).reshape(-1)
            new_ptr = torch.arange(B + 1, device=dev) * N
            shift = new_ptr[:-1].repeat_interleave(E)
            graph_of_node = torch.arange(B, device=dev).repeat_interleave(N)
        else:
            n_counts = self.node_ptr[idx + 1] - self.node_ptr[idx]
            e_counts = self.edge_ptr[idx + 1] - self.edge_ptr[idx]
            if layout is None:
                n_total, e_total = int(n_counts.sum()), int(e_counts.sum())  # host sync: sizes vary
            else:
                n_total, e_total = layout.n_nodes, layout.n_edges
            nodes = _ranges(self.node_ptr[idx], n_counts, n_total)
            edges = _ranges(self.edge_ptr[idx], e_counts, e_total)
            new_ptr = torch.zeros(B + 1, dtype=torch.long, device=dev)
            new_ptr[1:] = torch.cumsum(n_counts, 0)
            shift = torch.repeat_interleave(new_ptr[:-1], e_counts, output_size=e_total)
            graph_of_node = torch.repeat_interleave(torch.arange(B, device=dev), n_counts, output_size=n_total)
        extra = {} if layout is None else {"in_degrees": layout.in_degrees}
        return Batch(
            x=self.x[nodes],
            edge_index=self.edge_index[:, edges] + shift,
            edge_attr=self.edge_attr[edges],
            node_layer=self.node_layer[nodes],
            node_pos=self.node_pos[nodes],
            edge_layer=self.edge_layer[edges],
            node_out=self.node_out[nodes],
            y=self.y[idx],
            batch=graph_of_node,
            ptr=new_ptr,
            num_graphs=B,
            **extra,
        )

    def get(self, i: int) -> Data:
        """Graph ``i`` as a standalone :class:`torch_geometric.data.Data`."""
        b = self.batch(torch.tensor([i], device=self.node_ptr.device))
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
        """Load a split file; raises :class:`CorruptFileError` naming it on any inconsistency
        (:func:`check_graph_set`)."""
        data = load_tensors(path)
        try:
            data["node_out"] = data["node_out"].bool()
            gs = GraphSet(**{f.name: data[f.name] for f in fields(GraphSet)})
        except (KeyError, TypeError) as e:
            raise CorruptFileError(f"{path}: not a graph set ({e})") from e
        problem = check_graph_set(gs)
        if problem:
            raise CorruptFileError(f"{path}: {problem}")
        return gs


def check_graph_set(gs: GraphSet) -> str | None:
    """What is wrong with ``gs`` as a collated graph set, or ``None``.

    Checks dtypes and ranks, pointers (start at 0, non-decreasing, ending at the node and edge
    counts), one entry per node / edge / graph in every per-node, per-edge and per-graph
    tensor, and every edge's endpoints inside its own graph.
    """
    long_fields = ("edge_index", "node_ptr", "edge_ptr", "node_layer", "node_pos", "edge_layer", "net_id")
    for name in long_fields:
        if getattr(gs, name).dtype != torch.long:
            return f"{name} has dtype {getattr(gs, name).dtype}, expected int64"
    if gs.x.dim() != 2 or gs.edge_attr.dim() != 2 or gs.edge_index.dim() != 2 or gs.edge_index.shape[0] != 2:
        return (
            f"shapes x {tuple(gs.x.shape)}, edge_attr {tuple(gs.edge_attr.shape)}, edge_index "
            f"{tuple(gs.edge_index.shape)}: expected (ΣN, F), (ΣE, D), (2, ΣE)"
        )
    if not (gs.x.is_floating_point() and gs.edge_attr.is_floating_point()):
        return "node and edge features must be floating point"
    n_nodes, n_edges = gs.x.shape[0], gs.edge_attr.shape[0]
    for name, total in (("node_ptr", n_nodes), ("edge_ptr", n_edges)):
        ptr = getattr(gs, name)
        if ptr.dim() != 1 or ptr.numel() < 1 or int(ptr[0]) != 0 or int(ptr[-1]) != total:
            return f"{name} must run from 0 to {total}"
        if bool((ptr.diff() < 0).any()):
            return f"{name} is not non-decreasing"
    G = gs.node_ptr.numel() - 1
    if gs.edge_ptr.numel() != G + 1:
        return f"node_ptr holds {G} graphs, edge_ptr {gs.edge_ptr.numel() - 1}"
    sizes = {
        "node_layer": n_nodes, "node_pos": n_nodes, "node_out": n_nodes,
        "edge_layer": n_edges, "edge_index": n_edges, "y": G, "net_id": G,
    }  # fmt: skip
    for name, n in sizes.items():
        t = getattr(gs, name)
        size = t.shape[-1] if name == "edge_index" else (t.shape[0] if t.dim() else -1)
        if size != n:
            return f"{name} has {size} entries, expected {n}"
    if n_edges:
        graph_of_edge = torch.repeat_interleave(torch.arange(G), gs.edge_ptr.diff())
        n_of_edge = (gs.node_ptr[1:] - gs.node_ptr[:-1])[graph_of_edge]
        if bool(((gs.edge_index < 0) | (gs.edge_index >= n_of_edge)).any()):
            return "edge_index points outside its graph's nodes"
    return None


META = "meta.json"
FILES = "files"  # meta.json: SHA-256 of every split file, written with them, checked on every read


def write_graph_dir(out: str | Path, sets: dict[str, GraphSet], meta: dict) -> dict:
    """Write ``<out>/<split>.safetensors`` for every split and ``<out>/meta.json`` as one
    generation (:func:`pipeline.io.staged_dir`); ``meta.json`` gains ``files``: each split
    file's SHA-256, the content address that :func:`read_graph_dir` checks. Returns the meta."""
    with staged_dir(out) as tmp:
        files = {}
        for split, gs in sets.items():
            gs.save(tmp / f"{split}.safetensors")
            files[f"{split}.safetensors"] = file_sha256(tmp / f"{split}.safetensors")
        meta = meta | {FILES: files}
        write_json(tmp / META, meta)
    return meta


def data_version(meta: dict, derived: dict | None = None) -> str:
    """The content-addressed version of a graphs folder: a hash of its ``meta.json`` (spec,
    statistics, counts and every split file's SHA-256) and of whatever a task ``derived`` from the
    splits after loading. A change to any byte a run reads changes it."""
    return fingerprint([meta, derived]) if derived else fingerprint(meta)


def read_graph_dir(graphs_dir: str | Path, splits: tuple[str, ...]) -> tuple[dict, dict[str, GraphSet]]:
    """``(meta, {split: GraphSet})`` of a folder written by :func:`write_graph_dir`; every split
    file is checked against its SHA-256 in ``meta.json`` first. Raises
    :class:`CorruptFileError` naming the file that is missing, damaged, from another write, or
    whose feature widths disagree with the first split's."""
    gdir = Path(graphs_dir)
    meta = read_json(gdir / META)
    files = meta.get(FILES) if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        raise CorruptFileError(f"{gdir / META}: no file hashes (written by an older metazoo: re-run its stage)")
    out = {}
    for split in splits:
        path = gdir / f"{split}.safetensors"
        if not path.is_file():
            raise CorruptFileError(f"{path}: missing")
        if file_sha256(path) != files.get(path.name):
            raise CorruptFileError(f"{path}: not the file {gdir / META} recorded (damaged, or from another write)")
        out[split] = GraphSet.load(path)
        first = next(iter(out))
        for name, what in (("x", "node"), ("edge_attr", "edge")):
            got, want = getattr(out[split], name).shape[1], getattr(out[first], name).shape[1]
            if got != want:
                raise CorruptFileError(f"{path}: {what} features of width {got}, {first} has {want}")
    return meta, out
