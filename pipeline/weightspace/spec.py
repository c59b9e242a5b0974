"""One representation of a batch of networks' parameters, with its symmetry declared once.

A *zoo batch* is a ``dict[str, Tensor]`` whose tensors all carry a leading net axis ``B``.
Its :class:`ParamSpec` names every tensor, its per-net shape, and tags each axis with the
neuron layer it indexes (or ``None`` for a feature axis such as a kernel offset or a spline
coefficient). Neuron layers are numbered ``0 .. L`` (inputs ``0``, outputs ``L``); the hidden
layers ``1 .. L-1`` are the ones whose neurons may be permuted without changing the function.

Every family (MLP/SIREN, CNN, KAN) only has to build a spec; permutation, flattening, graph
conversion and the symmetry tests are written once against the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor of a network.

    Attributes:
        name: key in the parameter dict (e.g. ``"layers.0.weight"``).
        shape: per-net shape (without the leading net axis).
        axes: for every axis, the neuron layer it indexes, or ``None`` for a feature axis.
        role: ``"edge"`` if the tensor has exactly two neuron axes (``dst`` layer first for
            MLP/CNN weights), ``"node"`` if it has one (biases), as read by the graph builder.
    """

    name: str
    shape: tuple[int, ...]
    axes: tuple[int | None, ...]
    role: str

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.axes):
            raise ValueError(f"{self.name}: shape {self.shape} and axes {self.axes} differ in rank")
        n_neuron_axes = sum(a is not None for a in self.axes)
        expected = {"edge": 2, "node": 1}[self.role]
        if n_neuron_axes != expected:
            raise ValueError(f"{self.name}: role {self.role!r} needs {expected} neuron axes")

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def neuron_layers(self) -> tuple[int, ...]:
        return tuple(a for a in self.axes if a is not None)


@dataclass(frozen=True)
class ParamSpec:
    """The parameter layout of one architecture and its permutation symmetry.

    Attributes:
        family: architecture family name (``"mlp"``, ``"cnn"``, ``"kan"``).
        layer_sizes: neurons per layer ``(n_0, ..., n_L)``.
        tensors: the parameter tensors in storage / flattening order.
        sign_symmetric: the hidden activation is odd (``sin``, ``tanh``), so negating a hidden
            neuron (every axis tagged with its layer, at that index) also keeps the function.
        tied: pairs of hidden layers joined by an identity residual connection (equal sizes):
            their neurons are added one to one, so only a permutation shared by both keeps the
            function (:func:`random_permutations` draws one per group of tied layers).
    """

    family: str
    layer_sizes: tuple[int, ...]
    tensors: tuple[TensorSpec, ...]
    sign_symmetric: bool = False
    tied: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for a, b in self.tied:
            hidden = range(1, len(self.layer_sizes) - 1)
            if a not in hidden or b not in hidden or self.layer_sizes[a] != self.layer_sizes[b]:
                raise ValueError(f"tied layers {a} and {b} must be hidden layers of one size ({self.layer_sizes})")

    @property
    def n_layers(self) -> int:
        """Number of parameter layers ``L`` (neuron layers are ``0..L``)."""
        return len(self.layer_sizes) - 1

    @property
    def hidden_layers(self) -> range:
        """Neuron layers whose order is a symmetry of the function."""
        return range(1, self.n_layers)

    @property
    def perm_groups(self) -> list[tuple[int, ...]]:
        """The hidden layers grouped by shared permutation: tied layers (:attr:`tied`, followed
        transitively) form one group, every other hidden layer its own."""
        root = {l: l for l in self.hidden_layers}

        def find(l: int) -> int:
            while root[l] != l:
                l = root[l]
            return l

        for a, b in self.tied:
            root[find(b)] = find(a)
        groups: dict[int, list[int]] = {}
        for l in self.hidden_layers:
            groups.setdefault(find(l), []).append(l)
        return [tuple(g) for g in groups.values()]

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        """JSON-ready description (stored beside every zoo shard set)."""
        out = {
            "family": self.family,
            "sign_symmetric": self.sign_symmetric,
            "layer_sizes": list(self.layer_sizes),
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "axes": list(t.axes), "role": t.role} for t in self.tensors
            ],
        }
        if self.tied:  # absent when empty: specs without residuals keep their stored form
            out["tied"] = [list(p) for p in self.tied]
        return out

    @staticmethod
    def from_dict(d: Mapping) -> ParamSpec:
        return ParamSpec(
            family=str(d["family"]),
            layer_sizes=tuple(int(s) for s in d["layer_sizes"]),
            tensors=tuple(TensorSpec(t["name"], tuple(t["shape"]), tuple(t["axes"]), t["role"]) for t in d["tensors"]),
            sign_symmetric=bool(d.get("sign_symmetric", False)),
            tied=tuple((int(a), int(b)) for a, b in d.get("tied", ())),
        )


def mlp_spec(layer_sizes: tuple[int, ...] | list[int]) -> ParamSpec:
    """Spec of a fully connected net ``n_0 -> n_1 -> ... -> n_L``.

    ``layers.{l}.weight`` has shape ``(n_{l+1}, n_l)`` (PyTorch ``nn.Linear`` order: rows are
    the destination neurons) and ``layers.{l}.bias`` shape ``(n_{l+1},)``.
    """
    sizes = tuple(int(s) for s in layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least 2 neuron layers, got {sizes}")
    tensors = []
    for l in range(len(sizes) - 1):
        tensors.append(TensorSpec(f"layers.{l}.weight", (sizes[l + 1], sizes[l]), (l + 1, l), "edge"))
        tensors.append(TensorSpec(f"layers.{l}.bias", (sizes[l + 1],), (l + 1,), "node"))
    return ParamSpec("mlp", sizes, tuple(tensors))


def check_params(params: Mapping[str, Tensor], spec: ParamSpec) -> int:
    """Validate a zoo batch against its spec; return the batch size ``B``."""
    missing = set(spec.names) - set(params)
    extra = set(params) - set(spec.names)
    if missing or extra:
        raise ValueError(f"parameter keys differ from spec: missing {sorted(missing)}, extra {sorted(extra)}")
    sizes = {params[t.name].shape[0] for t in spec.tensors}
    if len(sizes) != 1:
        raise ValueError(f"tensors disagree on the batch size: {sizes}")
    for t in spec.tensors:
        if tuple(params[t.name].shape[1:]) != t.shape:
            raise ValueError(f"{t.name}: expected per-net shape {t.shape}, got {tuple(params[t.name].shape[1:])}")
    return sizes.pop()


def random_permutations(spec: ParamSpec, batch: int, generator: torch.Generator | None = None) -> dict[int, Tensor]:
    """One random permutation per net of every hidden layer: ``{layer: (B, n_layer) long}``;
    tied layers (:attr:`ParamSpec.tied`) get the same one. Without ties, the draws are one per
    hidden layer in order."""
    out = {}
    for group in spec.perm_groups:
        perm = torch.argsort(torch.rand(batch, spec.layer_sizes[group[0]], generator=generator), dim=1)
        out |= {l: perm for l in group}
    return dict(sorted(out.items()))


def permute(params: Mapping[str, Tensor], spec: ParamSpec, perms: Mapping[int, Tensor]) -> Params:
    """Reorder neurons: every axis tagged with layer ``l`` is indexed by ``perms[l]``.

    Args:
        params: zoo batch, tensors ``(B, *shape)``.
        spec: its layout.
        perms: ``{layer: (n_l,) or (B, n_l) long}``; new neuron ``k`` is old ``perms[l][k]``.
            Layers absent from ``perms`` keep their order. Permuting an input or output layer
            is allowed (tests use it as a *wrong* permutation that must change the function).
    Returns:
        A new zoo batch with the same keys and shapes.
    """

    def reorder(x: Tensor, dim: int, p: Tensor) -> Tensor:
        p = p.to(x.device)
        if p.dim() == 1:
            return x.index_select(dim, p)
        shape = [1] * x.dim()
        shape[0], shape[dim] = p.shape[0], p.shape[1]
        return torch.gather(x, dim, p.view(shape).expand(*x.shape[:dim], p.shape[1], *x.shape[dim + 1 :]))

    return _map_neuron_axes(params, spec, perms, reorder)


def random_signs(spec: ParamSpec, batch: int, generator: torch.Generator | None = None) -> dict[int, Tensor]:
    """Independent random signs ``{layer: (B, n_layer)}`` in ``{-1, +1}`` for every hidden layer."""
    return {
        l: torch.randint(0, 2, (batch, spec.layer_sizes[l]), generator=generator).float() * 2 - 1
        for l in spec.hidden_layers
    }


def flip_signs(params: Mapping[str, Tensor], spec: ParamSpec, signs: Mapping[int, Tensor]) -> Params:
    """Multiply every axis tagged with layer ``l`` by ``signs[l]`` (``(B, n_l)``, entries ±1).

    For a ``sign_symmetric`` spec and hidden layers only, the function is unchanged: a hidden
    neuron's incoming weights, bias and outgoing weights are all negated.
    """

    def scale(x: Tensor, dim: int, sign: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[0], shape[dim] = x.shape[0], x.shape[dim]
        return x * sign.to(x).view(shape)

    return _map_neuron_axes(params, spec, signs, scale)


def _map_neuron_axes(params: Mapping[str, Tensor], spec: ParamSpec, per_layer: Mapping[int, Tensor], fn) -> Params:
    """Apply ``fn(tensor, dim, per_layer[l])`` along every axis tagged with a layer ``l`` in ``per_layer``."""
    out: Params = {}
    for t in spec.tensors:
        x = params[t.name]
        for axis, layer in enumerate(t.axes):
            if layer is not None and layer in per_layer:
                x = fn(x, axis + 1, per_layer[layer])
        out[t.name] = x
    return out


def flatten(params: Mapping[str, Tensor], spec: ParamSpec) -> Tensor:
    """Concatenate a zoo batch into ``(B, spec.n_params)`` in spec order."""
    return torch.cat([params[t.name].reshape(params[t.name].shape[0], -1) for t in spec.tensors], dim=1)


def unflatten(flat: Tensor, spec: ParamSpec) -> Params:
    """Inverse of :func:`flatten`: ``(B, n_params)`` -> zoo batch (views into ``flat``)."""
    out: Params = {}
    offset = 0
    for t in spec.tensors:
        out[t.name] = flat[:, offset : offset + t.numel].view(flat.shape[0], *t.shape)
        offset += t.numel
    if offset != flat.shape[1]:
        raise ValueError(f"flat vector has {flat.shape[1]} entries, spec needs {offset}")
    return out
