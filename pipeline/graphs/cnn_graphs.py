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

from pathlib import Path

import torch
from torch import Tensor

from pipeline.data import SPLITS
from pipeline.graphs.build import finite_nets
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet, write_graph_dir
from pipeline.weightspace.normalize import apply_stats, fit_stats
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


def write_cnn_graph_sets(
    out: str | Path,
    archs: list[CNNArch],
    params: list[Params],
    targets: list[Tensor],
    net_ids: list[Tensor],
    splits: list[list[str]],
    meta: dict,
) -> dict:
    """Write ``<out>/<split>.safetensors`` and ``<out>/meta.json`` for a CNN zoo; return the meta.

    Per architecture ``a``: ``params[a]`` its nets ``(N_a, ...)``, ``targets[a]`` ``(N_a,)``,
    ``net_ids[a]`` ``(N_a,)``, ``splits[a]`` each net's split. Every architecture is normalized
    with the per-tensor statistics of its own finite training nets; nets with a non-finite
    parameter are left out. All graphs share one kernel slot (the largest kernel) and one set
    of positional ids (the deepest net), so one model reads them all. ``meta.json`` holds the
    schema of :mod:`pipeline.graphs.build`, with ``spec`` and ``norm_stats`` only for a zoo of one
    architecture (``None`` otherwise) and ``architectures`` always.

    Raises:
        ValueError naming the split when a split has no usable net.
    """
    out = Path(out)
    K = max(max(a.kernels) for a in archs)
    hidden_slots = max(a.n_conv for a in archs)
    per_split: dict[str, list[GraphSet]] = {s: [] for s in SPLITS}
    excluded = dict.fromkeys(SPLITS, 0)
    all_stats = []
    for arch, p, y, ids, sp in zip(archs, params, targets, net_ids, splits, strict=True):
        spec = cnn_spec(arch)
        ok = finite_nets(p)
        idx = {
            s: torch.tensor([i for i, x in enumerate(sp) if x == s and bool(ok[i])], dtype=torch.long) for s in SPLITS
        }
        for s in SPLITS:
            excluded[s] += sum(x == s for x in sp) - int(idx[s].numel())
        if idx["train"].numel() == 0:
            raise ValueError(f"architecture {arch.name} has no usable training net")
        stats = fit_stats({k: v[idx["train"]] for k, v in p.items()}, spec)
        all_stats.append(stats)
        for s in SPLITS:
            if idx[s].numel():
                normed = apply_stats({k: v[idx[s]] for k, v in p.items()}, spec, stats)
                per_split[s].append(cnn_graph_set(normed, arch, y[idx[s]], ids[idx[s]], K, hidden_slots))
    one = len(archs) == 1
    template = graph_template(cnn_spec(archs[0]), K, hidden_slots)
    meta = {
        "spec": cnn_spec(archs[0]).to_dict() if one else None,
        "norm_stats": all_stats[0] if one else None,
        "n_pos": template.n_pos,
        "architectures": [a.to_dict() for a in archs],
        "kernel_slot": K,
        "activation_codes": list(ACTIVATION_CODES),
    } | meta
    meta |= {"counts": {}, "excluded": excluded}
    sets = {}
    for s in SPLITS:
        if not per_split[s]:
            raise ValueError(f"no usable net in split {s!r} ({excluded[s]} excluded)")
        sets[s] = GraphSet.concat(per_split[s]) if len(per_split[s]) > 1 else per_split[s][0]
        meta["counts"][s] = len(sets[s])
    return write_graph_dir(out, sets, meta)
