"""Function-preserving augmentations of training batches, one per symmetry of the spec.

``sign_flip``: for a sign-symmetric spec (odd activation, e.g. a SIREN's ``sin``), negating a
hidden neuron's incoming weights, bias and outgoing weights keeps the function. Invariant
metanetworks are not built to be invariant to it, so random flips are a free augmentation
(2^(hidden neurons) variants of every training net). Normalization keeps these tensors'
mean at 0 (:func:`pipeline.weightspace.normalize.fit_stats`), so the flip is exact on
normalized features too.

Every transform is called as ``augment(inputs, generator)`` with a CPU :class:`torch.Generator`:
the random numbers are drawn on the CPU (the same ones whatever the inputs' device) and moved
to the inputs' device with a non-blocking copy, so a training step on an accelerator does not
wait for the host.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch

from pipeline.weightspace.spec import (
    ParamSpec,
    flatten,
    flip_signs,
    permute,
    random_permutations,
    random_signs,
    unflatten,
)

AUGMENTATIONS = ("none", "sign_flip")


def _on(per_layer: dict[int, Tensor], device: torch.device) -> dict[int, Tensor]:
    """CPU draws ``{layer: tensor}`` moved to ``device`` (non-blocking: no wait for queued work)."""
    return {l: v.to(device, non_blocking=True) for l, v in per_layer.items()}


def sign_flip_flat(flat: Tensor, spec: ParamSpec, generator: torch.Generator) -> Tensor:
    """Random hidden-neuron sign flips of flattened parameters ``(B, P)`` -> ``(B, P)``."""
    params = unflatten(flat, spec)
    signs = _on(random_signs(spec, flat.shape[0], generator), flat.device)
    return flatten(flip_signs(params, spec, signs), spec)


def permute_flat(flat: Tensor, spec: ParamSpec, generator: torch.Generator) -> Tensor:
    """Random hidden-neuron permutations (one per net and layer) of flattened parameters ``(B, P)``.

    The augmentation of the "MLP + permutation augmentation" baselines: it shows a
    non-invariant model many equivalent copies of every training net. Graph models need none
    (they are invariant by construction).
    """
    params = unflatten(flat, spec)
    perms = _on(random_permutations(spec, flat.shape[0], generator), flat.device)
    return flatten(permute(params, spec, perms), spec)


def sign_flip_graphs(batch: Batch, generator: torch.Generator) -> Batch:
    """Random sign flips of the hidden nodes of a batch of MLP neural graphs.

    A node with sign ``s`` scales its features (bias) by ``s``; an edge ``i -> j`` scales its
    feature (weight) by ``s_i s_j``. Input and output nodes keep ``s = 1``.
    """
    hidden = (batch.node_layer > 0) & ~batch.node_out
    flip = (torch.rand(hidden.shape[0], generator=generator) < 0.5).to(hidden.device, non_blocking=True)
    s = torch.where(hidden & flip, -1.0, 1.0).to(batch.x.dtype)
    src, dst = batch.edge_index
    out = batch.clone()
    out.x = batch.x * s.unsqueeze(1)
    out.edge_attr = batch.edge_attr * (s[src] * s[dst]).unsqueeze(1)
    return out


def check_augmentation(name: str, spec: ParamSpec) -> None:
    """Raise ``ValueError`` if augmentation ``name`` is not a symmetry of ``spec``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {AUGMENTATIONS}")
    if name == "sign_flip" and not spec.sign_symmetric:
        raise ValueError(f"sign_flip needs a sign-symmetric (odd activation) spec; {spec.family} is not")


def augmenter(name: str, input_kind: str, spec: ParamSpec, permutations: bool = False):
    """The batch transform for augmentation ``name`` and a model's input kind (None if nothing).

    ``permutations=True`` adds :func:`permute_flat` (flat models only) after ``name``'s transform.
    """
    check_augmentation(name, spec)
    if permutations and input_kind != "flat":
        raise ValueError("permutation augmentation is for flat models; graph models are permutation invariant")
    steps = []
    if name == "sign_flip":
        steps.append(sign_flip_graphs if input_kind == "graph" else lambda x, g: sign_flip_flat(x, spec, g))
    if permutations:
        steps.append(lambda x, g: permute_flat(x, spec, g))
    if not steps:
        return None

    def apply(inputs, generator: torch.Generator):
        for step in steps:
            inputs = step(inputs, generator)
        return inputs

    return apply
