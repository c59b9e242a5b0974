"""Function-preserving augmentations of training batches, one per symmetry of the spec.

``sign_flip``: for a sign-symmetric spec (odd activation, e.g. a SIREN's ``sin``), negating a
hidden neuron's incoming weights, bias and outgoing weights keeps the function. Invariant
metanetworks are not built to be invariant to it, so random flips are a free augmentation
(2^(hidden neurons) variants of every training net). Normalization keeps these tensors'
mean at 0 (:func:`pipeline.weightspace.normalize.fit_stats`), so the flip is exact on
normalized features too.

``inr_affine`` (the INR augmentation of the DWSNets reference code, made exact): the image an
INR draws is rotated, scaled and translated by composing the network with ``x -> A x + t`` on
its input coordinates, which only touches the first layer: ``W_0' = W_0 A``,
``b_0' = b_0 + W_0 t``. The new network draws the transformed image exactly (the reference's
extra noise, dropout and deeper-layer bias shifts are not exact and are left out). A digit's
label survives a small warp, so it is a label-preserving augmentation for classification, not a
symmetry. Ranges as the reference's: rotation ``U(-45, 45)`` degrees, scale ``U(0.8, 1.2)``,
translation ``U(-0.25, 0.25)`` per coordinate (the grid spans ``[-1, 1]``).

Augmentations combine with ``+`` (``sign_flip+inr_affine``), applied in that order.

Every transform is called as ``augment(inputs, generator)`` with a CPU :class:`torch.Generator`:
the random numbers are drawn on the CPU (the same ones whatever the inputs' device) and moved
to the inputs' device with a non-blocking copy, so a training step on an accelerator does not
wait for the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import Batch

from pipeline.models.probes import ForwardSpec
from pipeline.weightspace.spec import (
    Params,
    ParamSpec,
    flatten,
    flip_signs,
    permute,
    random_permutations,
    random_signs,
    unflatten,
)

AUGMENTATIONS = ("sign_flip", "inr_affine")  # "none", or one or more joined by "+"
ROTATION_DEGREES, SCALE_RANGE, TRANSLATION_RANGE = 45.0, 0.2, 0.25  # inr_affine, as the DWSNets reference


def parse_augment(name: str) -> tuple[str, ...]:
    """``"sign_flip+inr_affine"`` -> ``("sign_flip", "inr_affine")``; ``"none"`` -> ``()``.

    Raises ``ValueError`` naming what is allowed for an unknown or repeated part.
    """
    if name == "none":
        return ()
    parts = tuple(name.split("+"))
    if any(p not in AUGMENTATIONS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"unknown augmentation {name!r}; 'none', or one or more of {AUGMENTATIONS} joined by '+'")
    return parts


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


def random_input_affines(batch: int, n_in: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random input maps ``x -> A x + t``, one per net: ``A (B, n_in, n_in)``, ``t (B, n_in)``.

    ``A = s R``: ``R`` rotates the first two coordinates by ``U(-45, 45)`` degrees (the identity
    for one input), ``s ~ U(0.8, 1.2)``; ``t ~ U(-0.25, 0.25)`` per coordinate.
    """
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(ROTATION_DEGREES)
    scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * SCALE_RANGE
    t = (torch.rand(batch, n_in, generator=generator) * 2 - 1) * TRANSLATION_RANGE
    A = torch.eye(n_in).repeat(batch, 1, 1)
    if n_in >= 2:
        c, s = torch.cos(angle), torch.sin(angle)
        A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = c, -s, s, c
    return A * scale[:, None, None], t


def first_layer(spec: ParamSpec) -> tuple[str, str]:
    """Names of the first layer's weight ``(B, n_1, n_0)`` and bias ``(B, n_1)`` tensors."""
    weight = [t.name for t in spec.tensors if t.role == "edge" and tuple(t.axes) == (1, 0)]
    bias = [t.name for t in spec.tensors if t.role == "node" and tuple(t.axes) == (1,)]
    if len(weight) != 1 or len(bias) != 1:
        raise ValueError(f"inr_affine needs one first-layer weight and bias; {spec.family} spec has {weight}, {bias}")
    return weight[0], bias[0]


def compose_input_affine(params: Params, spec: ParamSpec, A: Tensor, t: Tensor) -> Params:
    """The networks ``params`` composed with ``x -> A x + t`` on their inputs (exact).

    ``W_0' = W_0 A``, ``b_0' = b_0 + W_0 t``; raw (unnormalized) parameters, ``(B, ...)`` each.
    """
    w, b = first_layer(spec)
    out = dict(params)
    out[w] = params[w] @ A
    out[b] = params[b] + (params[w] @ t.unsqueeze(-1)).squeeze(-1)
    return out


def inr_affine_flat(flat: Tensor, spec: ParamSpec, fwd: ForwardSpec, generator: torch.Generator) -> Tensor:
    """:func:`compose_input_affine` with random maps on normalized flat parameters ``(B, P)``."""
    A, t = random_input_affines(flat.shape[0], spec.layer_sizes[0], generator)
    A, t = A.to(flat.device, flat.dtype, non_blocking=True), t.to(flat.device, flat.dtype, non_blocking=True)
    w, b = first_layer(spec)
    (wm, ws), (bm, bs) = fwd.weight_stats[0], fwd.bias_stats[0]
    params = unflatten(flat, spec)
    raw = {w: params[w] * ws + wm, b: params[b] * bs + bm}
    moved = compose_input_affine(raw, spec, A, t)
    return flatten(params | {w: (moved[w] - wm) / ws, b: (moved[b] - bm) / bs}, spec)


def inr_affine_graphs(batch: Batch, n_in: int, fwd: ForwardSpec, generator: torch.Generator) -> Batch:
    """:func:`compose_input_affine` with random maps on a batch of normalized MLP neural graphs.

    The first layer's edges (``edge_layer == 0``, from input node ``node_pos = i``) and the
    biases of layer-1 nodes change; fixed-size tensors only (no host synchronisation).
    """
    A, t = random_input_affines(batch.num_graphs, n_in, generator)
    dev, dtype = batch.x.device, batch.x.dtype
    A, t = A.to(dev, dtype, non_blocking=True), t.to(dev, dtype, non_blocking=True)
    (wm, ws), bs = fwd.weight_stats[0], fwd.bias_stats[0][1]  # a bias shift needs only the scale
    src, dst = batch.edge_index
    first = batch.edge_layer == 0
    col = torch.where(first, batch.node_pos[src], 0)
    w = torch.where(first, batch.edge_attr[:, 0] * ws + wm, 0.0)
    rows = torch.zeros(batch.x.shape[0], n_in, dtype=dtype, device=dev).index_put((dst, col), w, accumulate=True)
    g = batch.batch  # the graph of every node: rows of non-layer-1 nodes are zero
    new_rows = torch.einsum("ni,nij->nj", rows, A[g])
    shift = (rows * t[g]).sum(dim=1)
    out = batch.clone()
    layer1 = batch.node_layer == 1
    x0 = torch.where(layer1, batch.x[:, 0] + shift / bs, batch.x[:, 0])
    e0 = torch.where(first, (new_rows[dst, col] - wm) / ws, batch.edge_attr[:, 0])
    out.x = torch.cat([x0.unsqueeze(1), batch.x[:, 1:]], dim=1)
    out.edge_attr = torch.cat([e0.unsqueeze(1), batch.edge_attr[:, 1:]], dim=1)
    return out


def check_augmentation(name: str, spec: ParamSpec | None, fwd: ForwardSpec | None = None) -> None:
    """Raise ``ValueError`` if augmentation ``name`` does not apply to ``spec`` (``fwd``: the
    zoo's forward spec, which ``inr_affine`` needs to undo the normalization). ``spec`` is
    ``None`` for a zoo of several architectures, which admits no augmentation."""
    parts = parse_augment(name)
    if spec is None:
        if parts:
            raise ValueError("augmentations act on one architecture's weight space; this zoo has several")
        return
    if "sign_flip" in parts and not spec.sign_symmetric:
        raise ValueError(f"sign_flip needs a sign-symmetric (odd activation) spec; {spec.family} is not")
    if "inr_affine" in parts:
        if fwd is None:
            raise ValueError("inr_affine needs an INR zoo (its graphs' meta.json: forward)")
        first_layer(spec)


def model_augment(stage: str, model_settings) -> str:
    """The augmentation a model trains with: its settings' own ``augment`` where its ``Settings``
    declares one and it is set (the MLP of the DWSNets comparison: ``none``), else the stage's."""
    return getattr(model_settings, "augment", "") or stage


def augmenter(
    name: str, input_kind: str, spec: ParamSpec | None, permutations: bool = False, fwd: ForwardSpec | None = None
):
    """The batch transform for augmentation ``name`` and a model's input kind (None if nothing).

    ``permutations=True`` adds :func:`permute_flat` (flat models only) after ``name``'s transforms;
    ``fwd``: the zoo's forward spec (``inr_affine`` needs it). ``spec`` is ``None`` for a zoo of
    several architectures (:func:`check_augmentation`).
    """
    check_augmentation(name, spec, fwd)
    if permutations and input_kind != "flat":
        raise ValueError("permutation augmentation is for flat models; graph models are permutation invariant")
    if spec is None:  # several architectures: permutations only reach here for graph models (refused above)
        return None
    graph, n_in = input_kind == "graph", spec.layer_sizes[0]
    steps = []
    for part in parse_augment(name):
        if part == "sign_flip":
            steps.append(sign_flip_graphs if graph else lambda x, g: sign_flip_flat(x, spec, g))
        else:
            steps.append(
                (lambda b, g: inr_affine_graphs(b, n_in, fwd, g))
                if graph
                else (lambda x, g: inr_affine_flat(x, spec, fwd, g))
            )
    if permutations:
        steps.append(lambda x, g: permute_flat(x, spec, g))
    if not steps:
        return None

    def apply(inputs, generator: torch.Generator):
        for step in steps:
            inputs = step(inputs, generator)
        return inputs

    return apply
