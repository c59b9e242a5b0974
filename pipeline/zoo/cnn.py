"""Small CNN classifiers of images, many at once: architectures, their parameter spec, a batched
forward pass and initialization.

A CNN of :class:`CNNArch` with ``K`` conv layers maps images ``x`` of ``c_0`` channels to logits:

.. math::
    h_0 = x,\\qquad
    h_l = \\sigma\\big(\\mathrm{conv}_{s_l}(h_{l-1}; W_l) + b_l\\big) + \\sum_{(a, l) \\in R} \\mathrm{pool}(h_a)
    \\quad (l = 1..K),\\qquad
    \\hat y = W_{K+1}\\,\\mathrm{mean}_{xy}(h_K) + b_{K+1}

with ``same`` padding (``k // 2``) and stride ``s_l``, :math:`\\sigma` the activation, ``R`` the
identity residual connections (``(a, l)``: equal channel counts; ``pool`` is the adaptive average
pooling of :math:`h_a` to :math:`h_l`'s spatial size, channel by channel) and a linear head after
global average pooling. Neuron layers of the spec: ``0`` the input channels, ``l`` the output
channels of conv ``l`` (``conv.{l-1}`` in the parameter names), ``K + 1`` the classes.

Hidden channels are a symmetry: permuting the output channels of a conv with its bias, the
input channels of the next conv (or the head's columns) and, for a residual pair, both partners
alike, keeps the logits (the spec's :attr:`~pipeline.weightspace.spec.ParamSpec.tied`).

:func:`cnn_forward` runs ``B`` nets of one architecture as one grouped convolution per layer
(``groups = B``); every net may see its own images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.weightspace.spec import Params, ParamSpec, TensorSpec

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "identity": lambda z: z,
}


@dataclass(frozen=True)
class CNNArch:
    """One CNN architecture.

    Attributes:
        channels: output channels of every conv layer ``(c_1, ..., c_K)``.
        kernels: odd square kernel size of every conv layer.
        strides: stride of every conv layer.
        activation: a key of :data:`ACTIVATIONS`.
        residual: identity residual connections ``(a, l)``, ``0 < a < l <= K``, ``c_a == c_l``:
            the output of conv ``a`` (pooled to conv ``l``'s spatial size) is added to that of conv ``l``.
        in_channels: image channels.  n_classes: logits.
    """

    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    activation: str = "relu"
    residual: tuple[tuple[int, int], ...] = ()
    in_channels: int = 1
    n_classes: int = 10

    def __post_init__(self) -> None:
        K = len(self.channels)
        if K == 0 or len(self.kernels) != K or len(self.strides) != K:
            raise ValueError(f"channels, kernels and strides need one entry per conv layer: {self}")
        if any(k % 2 == 0 or k < 1 for k in self.kernels):
            raise ValueError(f"kernel sizes must be odd: {self.kernels}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        for a, l in self.residual:
            if not 0 < a < l <= K or self.channels[a - 1] != self.channels[l - 1]:
                raise ValueError(f"residual ({a}, {l}) needs 0 < a < l <= {K} and equal channels: {self.channels}")

    @property
    def n_conv(self) -> int:
        return len(self.channels)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (self.in_channels, *self.channels, self.n_classes)

    def to_dict(self) -> dict:
        return {
            "channels": list(self.channels),
            "kernels": list(self.kernels),
            "strides": list(self.strides),
            "activation": self.activation,
            "residual": [list(p) for p in self.residual],
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
        }

    @staticmethod
    def from_dict(d: dict) -> CNNArch:
        return CNNArch(
            tuple(int(c) for c in d["channels"]),
            tuple(int(k) for k in d["kernels"]),
            tuple(int(s) for s in d["strides"]),
            str(d["activation"]),
            tuple((int(a), int(b)) for a, b in d.get("residual", ())),
            int(d.get("in_channels", 1)),
            int(d.get("n_classes", 10)),
        )

    @property
    def name(self) -> str:
        """A readable id, e.g. ``c16-16-16_k3-3-3_s2-2-2_relu`` (``_r1-3`` per residual)."""
        parts = [
            "c" + "-".join(map(str, self.channels)),
            "k" + "-".join(map(str, self.kernels)),
            "s" + "-".join(map(str, self.strides)),
            self.activation,
        ] + [f"r{a}-{l}" for a, l in self.residual]
        return "_".join(parts)


def small_cnn_zoo_arch(channels: int = 16, n_conv: int = 3, in_channels: int = 1) -> CNNArch:
    """The Small CNN Zoo's architecture (Unterthiner et al.): ``n_conv`` 3x3 stride-2 convs of
    ``channels`` channels, ReLU, global average pooling, a linear layer to 10 classes."""
    return CNNArch((channels,) * n_conv, (3,) * n_conv, (2,) * n_conv, "relu", (), in_channels)


def cnn_spec(arch: CNNArch) -> ParamSpec:
    """Parameter spec: ``conv.{l}.weight`` ``(c_{l+1}, c_l, k, k)`` (PyTorch order, axes tagged
    ``(l+1, l, None, None)``), ``conv.{l}.bias``, then ``head.weight`` ``(classes, c_K)`` and
    ``head.bias``; residual pairs are :attr:`~pipeline.weightspace.spec.ParamSpec.tied`."""
    sizes = arch.layer_sizes
    tensors = []
    for l, k in enumerate(arch.kernels):
        tensors.append(TensorSpec(f"conv.{l}.weight", (sizes[l + 1], sizes[l], k, k), (l + 1, l, None, None), "edge"))
        tensors.append(TensorSpec(f"conv.{l}.bias", (sizes[l + 1],), (l + 1,), "node"))
    K = arch.n_conv
    tensors.append(TensorSpec("head.weight", (sizes[K + 1], sizes[K]), (K + 1, K), "edge"))
    tensors.append(TensorSpec("head.bias", (sizes[K + 1],), (K + 1,), "node"))
    return ParamSpec("cnn", sizes, tuple(tensors), tied=tuple(arch.residual))


def init_cnns(arch: CNNArch, seeds: list[int], scales: list[float] | None = None) -> Params:
    """PyTorch's default initialization (``U(-1/sqrt(fan_in), +)`` for weights and biases, as
    ``nn.Conv2d`` / ``nn.Linear``) times a per-net ``scale``; net ``b`` from ``Generator(seeds[b])``.

    Returns a zoo batch ``{name: (B, *shape)}`` in :func:`cnn_spec` order.
    """
    spec = cnn_spec(arch)
    scales = [1.0] * len(seeds) if scales is None else scales
    rows: dict[str, list[Tensor]] = {t.name: [] for t in spec.tensors}
    for seed, scale in zip(seeds, scales, strict=True):
        g = torch.Generator().manual_seed(int(seed))
        for t in spec.tensors:
            weight = spec.tensor(t.name.rsplit(".", 1)[0] + ".weight").shape
            fan_in = math.prod(weight[1:])
            rows[t.name].append((torch.rand(t.shape, generator=g) * 2 - 1) * (scale / math.sqrt(fan_in)))
    return {name: torch.stack(v) for name, v in rows.items()}


def cnn_forward(params: Params, arch: CNNArch, images: Tensor, feature_mask: Tensor | None = None) -> Tensor:
    """Logits of ``B`` nets of one architecture (grouped convolutions, ``groups = B``).

    Args:
        params: zoo batch of :func:`cnn_spec`, tensors ``(B, ...)``.
        images: ``(N, c_0, H, W)`` shown to every net, or ``(B, N, c_0, H, W)``, net by net.
        feature_mask: ``(B, N, c_K)`` multipliers of the pooled features (inverted dropout in
            training: 0 or ``1 / (1 - p)``); ``None``: none.
    Returns:
        ``(B, N, n_classes)``.
    """
    B = params["head.bias"].shape[0]
    if images.dim() == 4:
        N, c, H, W = images.shape
        h = images.repeat(1, B, 1, 1)  # (N, B c_0, H, W): net b's channels are block b
    else:
        _, N, c, H, W = images.shape
        h = images.transpose(0, 1).reshape(N, B * c, H, W)
    act = ACTIVATIONS[arch.activation]
    outs = [h]
    for l, (k, s) in enumerate(zip(arch.kernels, arch.strides, strict=True)):
        w = params[f"conv.{l}.weight"]
        z = F.conv2d(h, w.reshape(-1, *w.shape[2:]), params[f"conv.{l}.bias"].reshape(-1), s, k // 2, groups=B)
        h = act(z)
        for a, dst in arch.residual:
            if dst == l + 1:
                h = h + F.adaptive_avg_pool2d(outs[a], h.shape[-2:])
        outs.append(h)
    feats = h.mean(dim=(2, 3)).view(N, B, -1).transpose(0, 1)  # (B, N, c_K)
    if feature_mask is not None:
        feats = feats * feature_mask
    return torch.baddbmm(params["head.bias"].unsqueeze(1), feats, params["head.weight"].transpose(1, 2))
