"""A zoo's nets -> normalized neural graphs, one collated file per split, and ``meta.json``.

One builder and one ``meta.json`` schema for every zoo family (SIRENs, KAN-INRs, KAN
classifiers). ``meta.json`` holds

* ``spec``, ``norm_stats`` (per-tensor statistics of the usable training nets), ``n_pos``;
* ``kind`` (``classification`` / ``regression``), ``n_targets`` (classes, or regression targets),
  ``task``;
* ``counts`` (graphs per split) and ``excluded`` (nets left out per split: diverged or non-finite);
* ``files``: the SHA-256 of every split file, checked on every read, so the folder's content
  address is the hash of its ``meta.json`` (:func:`pipeline.graphs.store.write_graph_dir`);
* whatever the family adds (``forward``: the INR's forward pass for probe features;
  ``zoo_summary``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pipeline.data import SPLITS
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet, write_graph_dir
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import Params, ParamSpec


def write_graph_sets(
    out: str | Path,
    spec: ParamSpec,
    params: Params,
    targets: Tensor,
    net_ids: Tensor,
    splits: list[str],
    usable: Tensor,
    meta: dict,
) -> dict:
    """Write ``<out>/<split>.safetensors`` and ``<out>/meta.json``; return the meta.

    Args:
        params: every net of the zoo, spec tensors ``(N, ...)`` (raw, unnormalized).
        targets: ``(N,)`` labels or ``(N, ...)`` regression targets; ``net_ids`` ``(N,)``.
        splits: the split of each net; ``usable`` ``(N,)`` bool: nets left out where False.
        meta: the task's fields (``kind``, ``n_targets``, ``task``, and any extras).
    Raises:
        ValueError naming the split when a split has no usable net.
    """
    out = Path(out)

    def select(split: str) -> Tensor:
        return torch.tensor([i for i, s in enumerate(splits) if s == split and bool(usable[i])], dtype=torch.long)

    template = graph_template(spec)
    train = select("train")
    stats = fit_stats({k: v[train] for k, v in params.items()}, spec) if train.numel() else None
    meta = {"spec": spec.to_dict(), "norm_stats": stats, "n_pos": template.n_pos} | meta
    meta |= {"counts": {}, "excluded": {}}
    sets = {}
    for split in SPLITS:
        idx = select(split)
        n_all = sum(s == split for s in splits)
        if idx.numel() == 0:
            raise ValueError(f"no usable net in split {split!r} ({n_all} excluded)")
        normed = apply_stats({k: v[idx] for k, v in params.items()}, spec, stats)
        sets[split] = GraphSet.from_params(normed, template, targets[idx], net_ids[idx])
        meta["counts"][split] = int(idx.numel())
        meta["excluded"][split] = n_all - int(idx.numel())
    return write_graph_dir(out, sets, meta)


def finite_nets(params: Params) -> Tensor:
    """``(N,)`` bool: nets whose every parameter is finite."""
    ok = None
    for v in params.values():
        f = torch.isfinite(v.flatten(1)).all(1)
        ok = f if ok is None else ok & f
    return ok
