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

An :class:`Augmenter` draws its random numbers on the CPU from a :class:`torch.Generator` (the
same ones whatever the inputs' device) and applies them on the inputs' device. Called as
``augment(inputs, generator)`` it draws and moves them for that one batch; the training loop
instead draws a whole epoch's at its start, in the order the batches would draw them, and moves
them in one transfer (:meth:`Augmenter.epoch_draws`), so no step copies from the host and the
numbers are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch

from pipeline.device import from_host
from pipeline.graphs.neural_graph import graph_template
from pipeline.weightspace.forward import ForwardSpec
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


Draws = dict[str, Tensor]  # one transform's random numbers for one batch, each with a leading batch axis


def _moved(draws: Draws, device: torch.device) -> Draws:
    return {k: from_host(v, device) for k, v in draws.items()}


def sign_flip_flat(flat: Tensor, spec: ParamSpec, generator: torch.Generator) -> Tensor:
    """Random hidden-neuron sign flips of flattened parameters ``(B, P)`` -> ``(B, P)``."""
    return _flip_flat(flat, spec, _moved(_draw_signs(spec, flat.shape[0], generator), flat.device))


def _draw_signs(spec: ParamSpec, n: int, generator: torch.Generator) -> Draws:
    return {str(l): v for l, v in random_signs(spec, n, generator).items()}


def _flip_flat(flat: Tensor, spec: ParamSpec, draws: Draws) -> Tensor:
    signs = {int(l): v for l, v in draws.items()}
    return flatten(flip_signs(unflatten(flat, spec), spec, signs), spec)


def permute_flat(flat: Tensor, spec: ParamSpec, generator: torch.Generator) -> Tensor:
    """Random hidden-neuron permutations (one per net and layer) of flattened parameters ``(B, P)``.

    The augmentation of the "MLP + permutation augmentation" baselines: it shows a
    non-invariant model many equivalent copies of every training net. Graph models need none
    (they are invariant by construction).
    """
    return _permute_flat(flat, spec, _moved(_draw_perms(spec, flat.shape[0], generator), flat.device))


def _draw_perms(spec: ParamSpec, n: int, generator: torch.Generator) -> Draws:
    return {str(l): v for l, v in random_permutations(spec, n, generator).items()}


def _permute_flat(flat: Tensor, spec: ParamSpec, draws: Draws) -> Tensor:
    perms = {int(l): v for l, v in draws.items()}
    return flatten(permute(unflatten(flat, spec), spec, perms), spec)


def sign_flip_graphs(batch: Batch, generator: torch.Generator) -> Batch:
    """Random sign flips of the hidden nodes of a batch of MLP neural graphs.

    A node with sign ``s`` scales its features (bias) by ``s``; an edge ``i -> j`` scales its
    feature (weight) by ``s_i s_j``. Input and output nodes keep ``s = 1``.
    """
    return _flip_graphs(batch, _moved(_draw_node_flips(batch.x.shape[0], generator), batch.x.device))


def _draw_node_flips(n_nodes: int, generator: torch.Generator) -> Draws:
    return {"flip": torch.rand(n_nodes, generator=generator) < 0.5}


def _flip_graphs(batch: Batch, draws: Draws) -> Batch:
    if draws["flip"].shape[0] != batch.x.shape[0]:
        raise ValueError(f"{draws['flip'].shape[0]} sign draws for a batch of {batch.x.shape[0]} nodes")
    hidden = (batch.node_layer > 0) & ~batch.node_out
    s = torch.where(hidden & draws["flip"], -1.0, 1.0).to(batch.x.dtype)
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
    draws = _draw_affines(flat.shape[0], spec.layer_sizes[0], generator)
    return _affine_flat(flat, spec, fwd, _moved(draws, flat.device))


def _draw_affines(n: int, n_in: int, generator: torch.Generator) -> Draws:
    A, t = random_input_affines(n, n_in, generator)
    return {"A": A, "t": t}


def _affine_flat(flat: Tensor, spec: ParamSpec, fwd: ForwardSpec, draws: Draws) -> Tensor:
    A, t = draws["A"].to(flat.dtype), draws["t"].to(flat.dtype)
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
    draws = _draw_affines(batch.num_graphs, n_in, generator)
    return _affine_graphs(batch, n_in, fwd, _moved(draws, batch.x.device))


def _affine_graphs(batch: Batch, n_in: int, fwd: ForwardSpec, draws: Draws) -> Batch:
    dev, dtype = batch.x.device, batch.x.dtype
    A, t = draws["A"].to(dtype), draws["t"].to(dtype)
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


@dataclass(frozen=True)
class Part:
    """One transform of an :class:`Augmenter`: ``draw(n_nets, generator)`` makes its random
    numbers on the CPU, each tensor with ``rows`` leading rows per net; ``apply(inputs, draws)``
    uses them (on the inputs' device) without drawing."""

    draw: Callable[[int, torch.Generator], Draws]
    apply: Callable[[Any, Draws], Any]
    rows: int = 1


class Augmenter:
    """The batch transforms of one augmentation, applied in order (:func:`augmenter`)."""

    def __init__(self, parts: list[Part], graph: bool):
        self.parts, self.graph = parts, graph

    def n_nets(self, inputs) -> int:
        return inputs.num_graphs if self.graph else inputs.shape[0]

    def draw(self, n: int, generator: torch.Generator) -> list[Draws]:
        """Every part's random numbers for a batch of ``n`` nets, on the CPU, in order."""
        return [p.draw(n, generator) for p in self.parts]

    def apply(self, inputs, draws: list[Draws]):
        """The transforms with the given draws (on the inputs' device): no host work."""
        for part, d in zip(self.parts, draws, strict=True):
            inputs = part.apply(inputs, d)
        return inputs

    def __call__(self, inputs, generator: torch.Generator):
        """One batch: draw, move, apply."""
        draws = self.draw(self.n_nets(inputs), generator)
        device = inputs.x.device if self.graph else inputs.device
        return self.apply(inputs, [_moved(d, device) for d in draws])

    def epoch_draws(self, sizes: list[int], generator: torch.Generator, device: torch.device) -> list[list[Draws]]:
        """The draws of batches of ``sizes`` nets, made in the order one batch at a time makes
        them (the same numbers), moved to ``device`` in one transfer per tensor: no step of the
        epoch copies from the host."""
        per_batch = [self.draw(n, generator) for n in sizes]
        out: list[list[Draws]] = [[{} for _ in self.parts] for _ in sizes]
        for j, part in enumerate(self.parts):
            for key in per_batch[0][j] if per_batch else ():
                whole = from_host(torch.cat([d[j][key] for d in per_batch]), device)
                for i, piece in enumerate(whole.split([n * part.rows for n in sizes])):
                    out[i][j][key] = piece
        return out


def augmenter(
    name: str,
    input_kind: str,
    spec: ParamSpec | None,
    permutations: bool = False,
    fwd: ForwardSpec | None = None,
) -> Augmenter | None:
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
    nodes = graph_template(spec).n_nodes if graph else 0  # nodes of one net's graph
    parts = []
    for name_ in parse_augment(name):
        if name_ == "sign_flip" and graph:
            parts.append(Part(lambda n, g: _draw_node_flips(n * nodes, g), _flip_graphs, rows=nodes))
        elif name_ == "sign_flip":
            parts.append(Part(lambda n, g: _draw_signs(spec, n, g), lambda x, d: _flip_flat(x, spec, d)))
        elif graph:
            parts.append(Part(lambda n, g: _draw_affines(n, n_in, g), lambda b, d: _affine_graphs(b, n_in, fwd, d)))
        else:
            parts.append(Part(lambda n, g: _draw_affines(n, n_in, g), lambda x, d: _affine_flat(x, spec, fwd, d)))
    if permutations:
        parts.append(Part(lambda n, g: _draw_perms(spec, n, g), lambda x, d: _permute_flat(x, spec, d)))
    return Augmenter(parts, graph) if parts else None
