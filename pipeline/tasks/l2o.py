r"""Learning to optimize (Neural Graphs §4.3): optimizers whose update of every parameter is
computed by a network, optionally after mixing per-parameter features over the optimizee's
neural graph.

Per-parameter features (the optimizee's gradient :math:`g` and momenta
:math:`m_\beta \leftarrow \beta m_\beta + (1-\beta) g` for :math:`\beta \in` :data:`MOMENTA`),
each preprocessed as in Andrychowicz et al. (2016):

.. math::
    \rho(x) = \begin{cases} (\log|x| / p,\ \mathrm{sign}\,x) & |x| \ge e^{-p} \\
                            (-1,\ e^{p} x) & \text{otherwise} \end{cases}

so a parameter has :data:`N_FEATURES` channels :math:`\phi`. An optimizer maps them to the update
:math:`\theta \leftarrow \theta + s\,u(\phi)` with a fixed output scale :math:`s`:

* :class:`FFOptimizer`: :math:`u = \mathrm{MLP}(\phi)` for every parameter alike;
* :class:`GraphOptimizer`: the features of a net form the node (bias) and edge (weight) features
  of its neural graph, of :data:`N_FEATURES` channels each; an NG-GNN or NG-T encoder mixes them,
  and :math:`u = \mathrm{MLP}([\phi, c])` with :math:`c` the parameter's node state, or its edge
  state with both end nodes' states. Permuting the optimizee's hidden neurons permutes the
  updates alike (tested both ways).

Optimizees are batched ReLU classifiers, MLPs (:func:`pipeline.weightspace.forward.mlp_forward`) or
CNNs (:func:`pipeline.zoo.cnn.cnn_forward`, as the paper): ``B`` nets of one
:class:`~pipeline.weightspace.spec.ParamSpec` as one flat ``(B, P)`` tensor. A CNN's edge carries
a ``k x k`` kernel: a graph optimizer has ``K x K`` parameter slots per edge (its ``kernel``, a
kernel centred in them, an MLP weight a ``1 x 1`` kernel), so the node / edge features are the
channels of every slot. A :class:`Task` is an image classification data set (:func:`make_task`:
the offline digits or MNIST, pooled and standardized) with the spec of its optimizees.
:func:`unroll` runs ``k`` steps and returns the training losses; meta-training backpropagates
through the updates (first order: gradients of the optimizee enter as features, detached) and
never across a truncation boundary (:func:`unroll` detaches its starting state).

:func:`l2o_one` is one run of the ``l2o`` stage: meta-train a learned optimizer (or tune a
baseline's learning rate) on the meta-training task, then train fresh nets with it on both
tasks and score them (:func:`optimize`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.device import from_host
from pipeline.graphs.neural_graph import (
    GraphBatch,
    GraphTemplate,
    graph_template,
    kernel_size,
    params_to_features,
    uniform_batch,
)
from pipeline.io import fingerprint, tensor_hash
from pipeline.models.layers import TemplateBuckets
from pipeline.optim import AdamSettings, adam_update
from pipeline.weightspace.forward import mlp_forward
from pipeline.weightspace.spec import ParamSpec, flatten, mlp_spec, unflatten
from pipeline.zoo.adapt_zoo import init_pair_mlps
from pipeline.zoo.cnn import CNNArch, cnn_forward, cnn_spec, init_cnns

log = logging.getLogger(__name__)


MOMENTA = (0.5, 0.9, 0.99, 0.999, 0.9999)  # Neural Graphs §4.3: 0.5 ... 0.9999
N_FEATURES = 2 * (1 + len(MOMENTA))
PREPROCESS_P = 10.0


def preprocess(x: Tensor, p: float = PREPROCESS_P) -> Tensor:
    """Andrychowicz et al.'s log / sign preprocessing: ``(...)`` -> ``(..., 2)``."""
    big = x.abs() >= math.exp(-p)
    log = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    sign = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([log, sign], dim=-1)


@functools.cache
def _betas(betas: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The momenta as a tensor on ``device``, made once (not one host-to-device copy per step)."""
    return torch.tensor(betas, dtype=dtype).to(device)


def update_moments(moments: Tensor, grad: Tensor, betas: tuple[float, ...] = MOMENTA) -> Tensor:
    """``m_beta <- beta m_beta + (1 - beta) g`` for every beta: ``(B, P, M)``, ``(B, P)`` -> ``(B, P, M)``."""
    b = _betas(tuple(betas), grad.dtype, grad.device)
    return b * moments + (1 - b) * grad.unsqueeze(-1)


def optimizer_features(grad: Tensor, moments: Tensor) -> Tensor:
    """Every parameter's :data:`N_FEATURES` channels: ``(B, P)``, ``(B, P, M)`` -> ``(B, P, C)``."""
    raw = torch.cat([grad.unsqueeze(-1), moments], dim=-1)  # (B, P, 1 + M)
    return preprocess(raw).flatten(-2)


class PerParameterMLP(nn.Module):
    r"""The same MLP for every parameter: ``(B, P, C_in)`` -> ``(B, P)``,
    :math:`u = W_3\,\mathrm{SiLU}(W_2\,\mathrm{SiLU}(W_1 z))`."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)


class FFOptimizer(nn.Module):
    """The per-parameter feed-forward learned optimizer: :math:`u = \\mathrm{MLP}(\\phi)`.

    Shapes: features ``(B, P, C)`` -> updates ``(B, P)`` (before the output scale)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.mlp = PerParameterMLP(N_FEATURES, hidden)

    def forward(self, features: Tensor, graph: OptimizeeGraph | None = None) -> Tensor:
        return self.mlp(features)


def layer_template(spec: ParamSpec) -> GraphTemplate:
    """The neural graph of ``spec`` with one positional id per neuron *layer* (input neurons
    share one too), so that an optimizer meta-trained on one width of net runs on another."""
    t = graph_template(spec)
    return dataclasses.replace(t, node_pos=t.node_layer.clone(), n_pos=spec.n_layers + 1)


@dataclass(frozen=True)
class OptimizeeGraph:
    """The neural graph of an optimizee spec (:func:`layer_template`) and where every parameter
    sits in it: ``node_param (N,)`` the flat index of each node's bias (``P``, a zero column, for
    input neurons), ``edge_param (E, K * K)`` that of each of an edge's ``K x K`` kernel slots
    (``P`` where the slot is empty), ``param_slot (P,)`` each parameter's row in the stacked
    ``[nodes; edges]`` and ``param_pos (P,)`` its slot within an edge (``K * K`` for a bias);
    ``buckets``, the template's PNA degree buckets (for a batch of its copies, made on the device
    without reading the batch). Built once per spec and ``K`` (:func:`optimizee_graph`); a
    feature graph is then two gathers."""

    template: GraphTemplate
    node_param: Tensor
    edge_param: Tensor
    param_slot: Tensor
    param_pos: Tensor
    buckets: TemplateBuckets

    def to(self, device: torch.device | str) -> OptimizeeGraph:
        return OptimizeeGraph(
            self.template.to(device),
            *(getattr(self, k).to(device) for k in ("node_param", "edge_param", "param_slot", "param_pos")),
            copy.deepcopy(self.buckets).to(device),
        )


def optimizee_kernel(spec: ParamSpec) -> int:
    """The largest kernel of an optimizee spec: ``k`` of a CNN's ``k x k`` convs, 1 for an MLP."""
    if spec.family not in ("mlp", "cnn"):
        raise ValueError(f"learned optimizers take MLP or CNN optimizees, got {spec.family}")
    return kernel_size(spec) if spec.family == "cnn" else 1


@functools.lru_cache(maxsize=8)
def optimizee_graph(spec: ParamSpec, kernel: int = 1) -> OptimizeeGraph:
    """:class:`OptimizeeGraph` of ``spec`` for an optimizer of ``kernel x kernel`` edge slots: the
    graph construction applied to the parameter ids ``1 .. P`` (exact in float64) tells where each
    parameter lands; an edge's ``k x k`` ids are centred in its ``kernel x kernel`` slots."""
    k = optimizee_kernel(spec)
    if k > kernel or (kernel - k) % 2:
        raise ValueError(f"{k} x {k} kernels do not centre in this optimizer's {kernel} x {kernel} edge slots")
    t = layer_template(spec)
    if t.edge_const is not None:
        raise ValueError("learned optimizers take optimizees without residual connections")
    P = spec.n_params
    x, e = params_to_features(unflatten(torch.arange(1, P + 1, dtype=torch.float64).unsqueeze(0), spec), t)
    o = (kernel - k) // 2  # centre each k x k kernel in the K x K slots (as the neural graphs do)
    e = F.pad(e.view(t.n_edges, k, k), (o, o, o, o)).flatten(1)
    node_param, edge_param = x[0, :, 0].long() - 1, e.long() - 1
    node_param[node_param < 0] = P
    edge_param[edge_param < 0] = P
    slot = torch.empty(P, dtype=torch.long)
    pos = torch.full((P,), kernel * kernel, dtype=torch.long)
    has_bias = node_param < P
    slot[node_param[has_bias]] = torch.arange(t.n_nodes)[has_bias]
    row, col = (edge_param < P).nonzero(as_tuple=True)
    slot[edge_param[row, col]] = t.n_nodes + row
    pos[edge_param[row, col]] = col
    return OptimizeeGraph(t, node_param, edge_param, slot, pos, TemplateBuckets(t))


def avg_log_degree(spec: ParamSpec) -> float:
    r"""PNA's :math:`\delta` of the optimizees of ``spec``: the mean of ``log(in-degree + 1)`` over
    the nodes of their graph (as :func:`pipeline.train.data_shape` for the training graphs)."""
    t = layer_template(spec)
    deg = torch.bincount(t.edge_index[1], minlength=t.n_nodes)
    return float(torch.log1p(deg.double()).mean())


def feature_graphs(features: Tensor, graph: OptimizeeGraph) -> GraphBatch:
    """The neural graphs of ``B`` nets whose node / edge features are the per-parameter feature
    channels ``(B, P, C)``: a node's ``C`` channels, an edge's ``K * K * C`` (slot by slot; input
    neurons, which have no bias, and empty kernel slots get zeros)."""
    padded = F.pad(features, (0, 0, 0, 1))  # (B, P + 1, C): row P is the zero of empty places
    return uniform_batch(graph.template, padded[:, graph.node_param], padded[:, graph.edge_param].flatten(2))


def graph_to_parameters(node: Tensor, edge: Tensor, graph: OptimizeeGraph) -> Tensor:
    """Per-node ``(B, N, K)`` and per-edge ``(B, E, K)`` values -> per-parameter ``(B, P, K)``
    (the inverse of :func:`feature_graphs`)."""
    return torch.cat([node, edge], dim=1)[:, graph.param_slot]


class GraphOptimizer(nn.Module):
    r"""FF + a neural-graph encoder: :math:`u_i = \mathrm{MLP}([\phi_i, c_i])` with :math:`c_i`
    from the encoder's final states: :math:`W_n x_v` for the bias of neuron ``v``,
    :math:`W_e [e_{uv}, x_u, x_v]` for the weight of edge ``u -> v``. The graphs carry one
    positional id per neuron layer (:func:`layer_template`), so one optimizer runs on nets of any
    width with ``n_layers`` parameter layers. With ``kernel`` ``K > 1`` (CNN optimizees) an edge
    reads the channels of its ``K x K`` slots, and a weight's context adds a learned embedding of
    its slot: :math:`c_i = W_e [e_{uv}, x_u, x_v] + s_{pos(i)}` (a bias: :math:`s_{K^2}`).

    Args:
        n_layers: parameter layers of the optimizees.  encoder: ``"ng_gnn"`` or ``"ng_t"``.
        hidden: the encoder's and the MLP's width.  layers: encoder layers.  heads: NG-T's.
        avg_log_degree: NG-GNN's PNA :math:`\delta`, from the meta-training optimizees' graph
            (:func:`avg_log_degree`).  kernel: edge slots ``K`` (:func:`optimizee_kernel` of the
            meta-training optimizees; it runs on kernels up to ``K``).
    Shapes: features ``(B, P, C)`` and the optimizees' :func:`optimizee_graph` -> updates ``(B, P)``.
    """

    def __init__(
        self,
        n_layers: int,
        encoder: str = "ng_gnn",
        hidden: int = 32,
        layers: int = 2,
        heads: int = 4,
        avg_log_degree: float = 1.0,
        kernel: int = 1,
    ):
        super().__init__()
        n_pos, edge_dim = n_layers + 1, kernel * kernel * N_FEATURES
        self.kernel = kernel
        if encoder == "ng_gnn":
            from pipeline.models.ng_gnn import NGGNNEncoder

            self.encoder = NGGNNEncoder(
                N_FEATURES,
                edge_dim,
                n_pos,
                1,
                hidden=hidden,
                layers=layers,
                fourier_features=0,
                avg_log_degree=avg_log_degree,
            )
        elif encoder == "ng_t":
            from pipeline.models.ng_t import NGTEncoder

            self.encoder = NGTEncoder(N_FEATURES, edge_dim, n_pos, hidden=hidden, layers=layers, heads=heads)
        else:
            raise ValueError(f"unknown encoder {encoder!r}; choose from ('ng_gnn', 'ng_t')")
        self.by_degree = encoder == "ng_gnn"
        self.node_ctx = nn.Linear(hidden, hidden)
        self.edge_ctx = nn.Linear(3 * hidden, hidden)
        self.slot = nn.Embedding(kernel * kernel + 1, hidden) if kernel > 1 else None
        self.mlp = PerParameterMLP(N_FEATURES + hidden, hidden)

    def forward(self, features: Tensor, graph: OptimizeeGraph) -> Tensor:
        t, B = graph.template, features.shape[0]
        batch = feature_graphs(features, graph)
        # NG-GNN's degree buckets from the template: no read-back of the batch's degrees
        x, e, src, dst, order = self.encoder(batch, graph.buckets) if self.by_degree else self.encoder(batch)
        node = self.node_ctx(x)
        edge = self.edge_ctx(torch.cat([e, x.index_select(0, src), x.index_select(0, dst)], dim=1))
        edge = edge.new_zeros(edge.shape).index_copy(0, order, edge)  # back to the batch's edge order
        ctx = graph_to_parameters(node.view(B, t.n_nodes, -1), edge.view(B, t.n_edges, -1), graph)
        if self.slot is not None:
            ctx = ctx + self.slot(graph.param_pos)
        return self.mlp(torch.cat([features, ctx], dim=-1))


# --------------------------------------------------------------------------------------------
# Optimizees, unrolls and the hand-written baselines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A classification task for ``B`` optimizees of ``spec``: shared training and test data.
    ``arch``: the optimizees' CNN architecture (images ``(n, 1, H, W)``), ``None`` for MLPs
    (flattened images ``(n, D)``)."""

    spec: ParamSpec
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    batch_size: int = 64
    source: str = ""  # the images' name
    arch: CNNArch | None = None

    @property
    def label(self) -> str:
        """``"digits_offline: 64 → 32 → 10"`` (a CNN: ``"digits_offline: CNN 1 → 8 → 8 → 10,
        3 x 3 stride-2 convs"``): the data and the optimizees' layer sizes."""
        sizes = " → ".join(map(str, self.spec.layer_sizes))
        if self.arch is not None:
            sizes = f"CNN {sizes}, {self.arch.kernels[0]} x {self.arch.kernels[0]} stride-2 convs"
        return f"{self.source or 'data'}: {sizes}"

    def logits(self, flat: Tensor, x: Tensor) -> Tensor:
        """``B`` optimizees ``(B, P)`` on examples ``x`` shared ``(n, ...)`` or per net ``(B, n, ...)``:
        ``(B, n, 10)``."""
        params = unflatten(flat, self.spec)
        return mlp_forward(params, self.spec, x) if self.arch is None else cnn_forward(params, self.arch, x)

    def init(self, seeds: list[int]) -> Tensor:
        """Fresh optimizees ``(B, P)``, net ``b`` from ``seeds[b]``: MLPs He-uniform with zero biases
        (:func:`pipeline.zoo.adapt_zoo.init_pair_mlps`), CNNs as PyTorch's layers
        (:func:`pipeline.zoo.cnn.init_cnns`)."""
        if self.arch is not None:
            return flatten(init_cnns(self.arch, seeds), self.spec)
        return flatten(init_pair_mlps(self.spec, seeds), self.spec)

    def to(self, device: torch.device | str) -> Task:
        return dataclasses.replace(
            self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        )


def make_task(
    source: str,
    pool: int,
    hidden: list[int],
    n_test: int,
    batch_size: int,
    seed: int,
    kind: str = "mlp",
    kernel: int = 3,
) -> Task:
    """A task of the offline images ``source`` (:func:`pipeline.data.load_images`), average-pooled
    by ``pool``, standardized with the training pixels' mean and std (one scalar each), split at
    random (``seed``) into ``n_test`` test images and the rest for training. Its optimizees
    (``kind``): ReLU MLPs ``inputs -> hidden -> 10`` of the flattened images, or ReLU CNNs of
    ``kernel x kernel`` stride-2 convs of ``hidden`` channels, global average pooling and a
    linear layer to 10 classes."""
    from pipeline.data import load_images, split_indices

    images, labels = load_images(source)
    x = F.avg_pool2d(images.unsqueeze(1), pool) if pool > 1 else images.unsqueeze(1)
    x = x.flatten(1) if kind == "mlp" else x
    split = split_indices(len(labels), {"train": len(labels) - n_test, "test": n_test}, seed)
    train = x[split["train"]]
    mean, std = train.mean(), train.std()
    x = (x - mean) / std
    if kind == "mlp":
        arch, spec = None, mlp_spec([x.shape[1], *hidden, 10])
    elif kind == "cnn":
        arch = CNNArch(tuple(hidden), (kernel,) * len(hidden), (2,) * len(hidden), "relu")
        spec = cnn_spec(arch)
    else:
        raise ValueError(f"unknown optimizee kind {kind!r}; choose from ('mlp', 'cnn')")
    tr, te = split["train"], split["test"]
    return Task(spec, x[tr].contiguous(), labels[tr], x[te].contiguous(), labels[te], batch_size, source, arch)


def batch_losses(flat: Tensor, task: Task, idx: Tensor) -> Tensor:
    """Per-net cross-entropy on the training examples ``idx`` ``(B, b)``: ``(B,)``."""
    logits = task.logits(flat, task.x_train[idx])
    return F.cross_entropy(logits.flatten(0, 1), task.y_train[idx].flatten(), reduction="none").view(idx.shape).mean(1)


def batch_indices(task: Task, gens: list[torch.Generator], device: torch.device, steps: int = 1) -> Tensor:
    """``(steps, B, batch_size)`` training examples, one row per net from its own generator (on
    the CPU: the same draws on every device), for ``steps`` steps at once: one host-to-device
    transfer, not one per step. Each generator makes the numbers ``steps`` one-step calls make."""
    n = task.y_train.shape[0]
    return from_host(
        torch.stack([torch.randint(n, (steps, task.batch_size), generator=g) for g in gens], dim=1), device
    )


@dataclass
class OptState:
    """Where ``B`` optimizees are: parameters ``(B, P)`` and momenta ``(B, P, M)``."""

    flat: Tensor
    moments: Tensor


def unroll(
    optimizer: nn.Module,
    state: OptState,
    task: Task,
    steps: int,
    gens: list[torch.Generator],
    scale: float,
    meta: bool = True,
) -> tuple[OptState, Tensor]:
    """``steps`` learned-optimizer steps from ``state`` (detached: no gradient crosses into an
    earlier unroll). Returns the new state and the training losses ``(steps, B)`` measured before
    each update. With ``meta`` both are attached to the optimizer's parameters (each loss a
    function of the updates before it); without, nothing is recorded for a meta-gradient (the
    evaluation: memory does not grow with ``steps``)."""
    flat, moments = state.flat.detach().requires_grad_(True), state.moments.detach()
    graph = optimizee_graph(task.spec, optimizer.kernel).to(flat.device) if hasattr(optimizer, "kernel") else None
    losses = []
    for idx in batch_indices(task, gens, flat.device, steps):
        flat, moments, loss = learned_step(optimizer, flat, moments, task, idx, scale, graph, meta)
        losses.append(loss)
    return OptState(flat if meta else flat.detach(), moments), torch.stack(losses)


def learned_step(
    optimizer: nn.Module,
    flat: Tensor,
    moments: Tensor,
    task: Task,
    idx: Tensor,
    scale: float,
    graph: OptimizeeGraph | None,
    meta: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One learned-optimizer step of :func:`unroll` on the batches ``idx`` ``(B, b)``: the loss
    before the update, then ``flat + scale * optimizer(features)``. Returns ``(flat, moments,
    loss)``; nothing is read back to the host."""
    loss = batch_losses(flat, task, idx)
    (grad,) = torch.autograd.grad(loss.sum(), flat, retain_graph=meta)
    grad = grad.detach()  # first order: the optimizee's gradient is an input
    moments = update_moments(moments, grad)
    with torch.set_grad_enabled(meta):
        flat = flat + scale * optimizer(optimizer_features(grad, moments), graph)
    if not meta:
        flat, loss = flat.detach().requires_grad_(True), loss.detach()
    return flat, moments, loss


BASELINES = ("adam", "sgd")


def baseline_steps(
    flat: Tensor,
    task: Task,
    steps: int,
    lr: float,
    gens: list[torch.Generator],
    method: str = "adam",
    momentum: float = 0.9,
) -> tuple[Tensor, Tensor]:
    """The hand-written baselines on ``B`` optimizees at once: Adam (``torch.optim.Adam``'s
    arithmetic, :func:`pipeline.optim.adam_update`) or SGD with heavy-ball momentum
    (``torch.optim.SGD``'s). Returns the final parameters and the losses ``(steps, B)``."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}")
    flat = flat.detach().clone()
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    lrs = torch.full((flat.shape[0],), float(lr), device=flat.device)
    settings = AdamSettings(steps)
    losses = []
    for step, idx in enumerate(batch_indices(task, gens, flat.device, steps), start=1):
        flat.requires_grad_(True)
        loss = batch_losses(flat, task, idx)
        (grad,) = torch.autograd.grad(loss.sum(), flat)
        flat = flat.detach()
        if method == "adam":
            adam_update(flat, grad, m, v, step, lrs, settings)
        else:
            m = grad if step == 1 else momentum * m + grad
            flat = flat - lr * m
        losses.append(loss.detach())
    return flat, torch.stack(losses)


@torch.no_grad()
def held_out_accuracy(flat: Tensor, task: Task) -> Tensor:
    """``(B,)`` accuracy of every optimizee on the task's test examples."""
    logits = task.logits(flat, task.x_test)
    return (logits.argmax(-1) == task.y_test).float().mean(1)


# --------------------------------------------------------------------------------------------
# Meta-training and evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaSettings:
    """Truncated meta-training: ``outer_steps`` updates of the optimizer (Adam, ``lr``), each on
    the mean training loss of ``n_optimizees`` nets over one unroll of ``unroll`` steps; a net is
    re-initialized after ``horizon`` steps. ``scale``: the update's output scale. The values (and
    their defaults) come from ``params.yaml``'s ``l2o`` section (:func:`settings_from`)."""

    outer_steps: int
    unroll: int
    horizon: int
    n_optimizees: int
    lr: float
    scale: float
    grad_clip: float


def fresh_state(task: Task, seeds: list[int], device: torch.device | str = "cpu") -> tuple[OptState, list]:
    """New optimizees of ``task`` from ``seeds`` (:meth:`Task.init`, zero momenta) and their batch
    generators (CPU: the draws do not depend on the device)."""
    flat = task.init(seeds).to(device)
    return OptState(flat, flat.new_zeros(*flat.shape, len(MOMENTA))), [
        torch.Generator().manual_seed(s + 1) for s in seeds
    ]


def meta_train(
    optimizer: nn.Module,
    task: Task,
    settings: MetaSettings,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 1,
) -> list[float]:
    """Meta-train ``optimizer`` (on ``task``'s device) on ``task``; returns the meta-loss of every
    outer step (the mean training loss after each update of an unroll, the last one's included).

    Every ``checkpoint_every`` outer steps (and after the last) the meta-losses since the last
    time are read back together and passed to ``on_step(outer, loss)`` one by one, and
    ``on_checkpoint(state)`` receives
    the whole meta-training state (the optimizer and its Adam, the optimizees in flight with their
    momenta and batch generators, the horizon counters, the losses so far); ``resume=state``
    continues after it, byte-identical on CPU to an uninterrupted run."""
    s = settings
    device = task.x_train.device
    meta_opt = torch.optim.Adam(optimizer.parameters(), lr=s.lr)
    history, state, gens, t, k, first = [], None, [], s.horizon, 0, 0
    pending: list[Tensor] = []  # meta-losses of the outer steps since the last checkpoint, on the device
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        meta_opt.load_state_dict(resume["meta_opt"])
        history, t, k, first = list(resume["history"]), resume["t"], resume["k"], resume["outer"] + 1
        state = OptState(resume["flat"].to(device), resume["moments"].to(device))
        gens = [torch.Generator().set_state(g) for g in resume["gens"]]
        torch.set_rng_state(resume["torch_rng"])
    for outer in range(first, s.outer_steps):
        if t >= s.horizon:
            seeds = [seed * 1_000_003 + k * s.n_optimizees + b for b in range(s.n_optimizees)]
            state, gens = fresh_state(task, seeds, device)
            t, k = 0, k + 1
        state, losses = unroll(optimizer, state, task, s.unroll, gens, s.scale)
        # the losses after each update of this unroll, the last one's included: the first loss of
        # the unroll was measured before any of its updates, so one more batch scores the last
        after = batch_losses(state.flat, task, batch_indices(task, gens, device)[0])
        meta = torch.cat([losses[1:], after.unsqueeze(0)]).mean()
        meta_opt.zero_grad(set_to_none=True)
        meta.backward()
        nn.utils.clip_grad_norm_(optimizer.parameters(), s.grad_clip)
        meta_opt.step()
        t += s.unroll
        pending.append(meta.detach())
        if (outer + 1) % checkpoint_every != 0 and outer + 1 != s.outer_steps:
            continue
        # the block's meta-losses in one read-back, not one per outer step
        first_of_block = outer + 1 - len(pending)
        for j, loss in enumerate(torch.stack(pending).tolist()):
            history.append(loss)
            if on_step is not None:
                on_step(first_of_block + j, loss)
        pending = []
        if on_checkpoint is not None:
            on_checkpoint(
                {
                    "epoch": outer + 1,  # outer steps done: what a resumed run reports
                    "outer": outer,
                    "optimizer": {n: v.detach().to("cpu", copy=True) for n, v in optimizer.state_dict().items()},
                    "meta_opt": meta_opt.state_dict(),
                    "flat": state.flat.detach().cpu(),
                    "moments": state.moments.detach().cpu(),
                    "gens": [g.get_state() for g in gens],
                    "torch_rng": torch.get_rng_state(),
                    "t": t,
                    "k": k,
                    "history": list(history),
                }
            )
    return history


@dataclass(frozen=True)
class Trajectory:
    """Fresh nets trained ``steps`` steps: per-net mean training loss of the last
    :data:`FINAL_WINDOW` steps ``(B,)``, per-net held-out test accuracy ``(B,)``, and the mean
    training loss of every step ``(steps,)``."""

    final_loss: Tensor
    test_acc: Tensor
    curve: Tensor


FINAL_WINDOW = 10


def trajectory(flat: Tensor, losses: Tensor, task: Task) -> Trajectory:
    """A :class:`Trajectory` from the final parameters ``(B, P)`` and the losses ``(steps, B)``."""
    losses = losses.detach().cpu()
    return Trajectory(losses[-FINAL_WINDOW:].mean(0), held_out_accuracy(flat, task).cpu(), losses.mean(1))


def optimize(
    optimizer: nn.Module | str,
    task: Task,
    steps: int,
    seeds: list[int],
    scale: float = 1e-2,
    lr: float = 1e-3,
    momentum: float = 0.9,
) -> Trajectory:
    """Train fresh nets of ``task`` from ``seeds`` for ``steps`` steps with a learned ``optimizer``
    (no meta-gradient; update scale ``scale``) or a baseline named ``"adam"`` / ``"sgd"`` (``lr``,
    ``momentum``), on the task's device."""
    state, gens = fresh_state(task, seeds, task.x_train.device)
    if isinstance(optimizer, str):
        flat, losses = baseline_steps(state.flat, task, steps, lr, gens, optimizer, momentum)
    else:
        state, losses = unroll(optimizer, state, task, steps, gens, scale, meta=False)
        flat = state.flat
    return trajectory(flat, losses, task)


# --------------------------------------------------------------------------------------------
# One run of the l2o stage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FFConfig:
    """The FF optimizer: its per-parameter MLP's width (``l2o.ff_hidden``)."""

    hidden: int


@dataclass(frozen=True)
class OptimizerConfig:
    """A graph optimizer (NG-GNN, NG-T): the encoder's and the per-parameter MLP's width, the
    encoder's layers and NG-T's attention heads (``l2o.graph_hidden``, ``graph_layers``, ``heads``)."""

    hidden: int
    layers: int
    heads: int


@dataclass(frozen=True)
class BaselineConfig:
    """A hand-written baseline: the learning rates tried on the meta-training task and the
    heavy-ball momentum of SGD (``l2o.baseline_lrs``, ``momentum``)."""

    lrs: tuple[float, ...]
    momentum: float


LEARNED = ("ff", "ng_gnn", "ng_t")
OPTIMIZER_LABELS = {  # every optimizer's name in the report, in its rows' order (baselines first)
    "adam": "Adam (lr tuned)",
    "sgd": "SGD + momentum (lr tuned)",
    "ff": "FF (per-parameter MLP)",
    "ng_gnn": "NG-GNN",
    "ng_t": "NG-T",
}


def build_optimizer(
    name: str, config: FFConfig | OptimizerConfig, n_layers: int, avg_log_degree: float = 1.0, kernel: int = 1
) -> nn.Module:
    r"""The learned optimizer ``name`` (:data:`LEARNED`) for optimizees of ``n_layers`` layers
    (``avg_log_degree``: NG-GNN's :math:`\delta`, ``kernel``: the edge slots, both of the
    meta-training optimizees)."""
    if name == "ff":
        return FFOptimizer(config.hidden)
    if name in ("ng_gnn", "ng_t"):
        return GraphOptimizer(n_layers, name, config.hidden, config.layers, config.heads, avg_log_degree, kernel)
    raise ValueError(f"unknown learned optimizer {name!r}; choose from {LEARNED}")


@dataclass(frozen=True)
class L2OData:
    """What every run reads: the meta-training task and the (bigger, other) test task."""

    meta_task: Task
    test_task: Task


@dataclass(frozen=True)
class L2OSettings:
    """A run's schedule: meta-training, then ``eval_steps`` steps of ``eval_nets`` fresh nets per
    task (and the baselines' learning-rate search on ``eval_nets`` other nets of the meta task)."""

    meta: MetaSettings
    eval_steps: int
    eval_nets: int


EVAL_SEED_BASE = 2_000_000_000  # evaluation nets never share a seed with meta-training ones
TUNE_SEED_BASE = 3_000_000_000  # nor with the nets a baseline's learning rate is chosen on


def eval_seeds(seed: int, n: int, base: int = EVAL_SEED_BASE) -> list[int]:
    """The ``n`` net seeds a run of seed ``seed`` evaluates on (tunes on, with ``TUNE_SEED_BASE``)."""
    return [base + 1000 * seed + i for i in range(n)]


def tune_learning_rate(
    method: str, config: BaselineConfig, task: Task, settings: L2OSettings, seed: int
) -> tuple[float, list[dict]]:
    """The learning rate of ``config.lrs`` with the lowest final training loss of ``method`` on
    ``task`` (nets of :data:`TUNE_SEED_BASE`, not the evaluation nets); a diverged run scores
    ``inf``. Returns it and one row per learning rate."""
    rows = []
    for i, lr in enumerate(config.lrs):
        t = optimize(
            method,
            task,
            settings.eval_steps,
            eval_seeds(seed, settings.eval_nets, TUNE_SEED_BASE),
            lr=lr,
            momentum=config.momentum,
        )
        loss = float(t.final_loss.mean())
        rows.append({"epoch": i + 1, "lr": lr, "train_loss": loss if math.isfinite(loss) else math.inf})
    best = min(rows, key=lambda r: r["train_loss"])
    return best["lr"], rows


def l2o_one(data: L2OData, name: str, config, seed: int, ctx, settings: L2OSettings) -> dict:
    """One run of the ``l2o`` stage (a Ray task): meta-train learned optimizer ``name`` on the
    meta task (or tune baseline ``name``'s learning rate there), then train ``eval_nets`` fresh
    nets of each task with it and score them. ``ctx``: :class:`pipeline.runs.TaskContext`.

    Returns ``test`` (per task: mean final training loss and test accuracy), ``per_net`` (every
    evaluation net's), ``curves`` (mean training loss per step), ``history`` (the meta-loss per
    logged outer step, or the loss per tried learning rate) and, for a learned optimizer, its
    weights and model card (:func:`load_optimizer`)."""
    device, where = ctx.start()
    t0 = time.time()
    tasks = {"meta_task": data.meta_task.to(device), "test_task": data.test_task.to(device)}
    n_layers = data.meta_task.spec.n_layers
    weights = card = lr = None
    if name in BASELINES:
        lr, history = tune_learning_rate(name, config, tasks["meta_task"], settings, seed)
        for row in history:
            ctx.epoch(row)
        log.info("%s seed %d: learning rate %g of %s", name, seed, lr, list(config.lrs))
        run = functools.partial(optimize, name, lr=lr, momentum=config.momentum)
    else:
        torch.manual_seed(seed)
        delta, kernel = avg_log_degree(data.meta_task.spec), optimizee_kernel(data.meta_task.spec)
        optimizer = build_optimizer(name, config, n_layers, delta, kernel).to(device)
        every = max(1, settings.meta.outer_steps // 10)
        logged: dict = {"history": [], "chunk": []}  # travels with each checkpoint (ctx.resumable)
        tick = time.time()

        def on_step(outer: int, loss: float) -> None:
            nonlocal tick
            logged["chunk"].append(loss)
            if (outer + 1) % every == 0 or outer + 1 == settings.meta.outer_steps:
                chunk = logged["chunk"]
                row = {"epoch": outer + 1, "train_loss": sum(chunk) / len(chunk), "epoch_seconds": time.time() - tick}
                logged["history"].append(row)
                ctx.epoch(row)
                log.info(
                    "%s seed %d: outer step %d/%d meta-loss %.4f",
                    name, seed, outer + 1, settings.meta.outer_steps, row["train_loss"],
                )  # fmt: skip
                logged["chunk"] = []
                tick = time.time()

        resumable = ctx.resumable(logged)
        meta_train(optimizer, tasks["meta_task"], settings.meta, seed, on_step, checkpoint_every=every, **resumable)
        history = logged["history"]
        optimizer.eval()
        run = functools.partial(optimize, optimizer, scale=settings.meta.scale)
        weights = {k: v.detach().cpu().clone() for k, v in optimizer.state_dict().items()}
        card = optimizer_card(name, config, n_layers, settings.meta.scale, delta, kernel)
    test, per_net, curves = {}, {}, {}
    for key, task in tasks.items():
        t = run(task, settings.eval_steps, eval_seeds(seed, settings.eval_nets))
        test |= {f"{key}_loss": float(t.final_loss.mean()), f"{key}_acc": float(t.test_acc.mean())}
        per_net[key] = {"final_loss": t.final_loss.tolist(), "test_acc": t.test_acc.tolist()}
        curves[key] = t.curve.tolist()
    n_params = 0 if weights is None else sum(v.numel() for v in weights.values())
    out = {
        "model": name,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "test": test,
        "per_net": per_net,
        "curves": curves,
        "history": history,
        "lr": lr,
        "n_params": n_params,
        "wall_seconds": time.time() - t0,
        "tasks": {k: t.label for k, t in tasks.items()},
        "settings": dataclasses.asdict(settings),
        **where,
    }
    if weights is not None:
        out |= {"weights": weights, "card": card}
    return out


def final_metrics(r: dict) -> dict[str, float]:
    """What MLflow shows for a finished ``l2o`` run."""
    extra = {"lr": r["lr"]} if r.get("lr") is not None else {}
    return {**{f"test_{k}": v for k, v in r["test"].items()}, "wall_seconds": r["wall_seconds"], **extra}


def optimizer_card(
    name: str,
    config: FFConfig | OptimizerConfig,
    n_layers: int,
    scale: float,
    avg_log_degree: float = 1.0,
    kernel: int = 1,
) -> dict:
    """The model card of a meta-trained optimizer (what :func:`load_optimizer` rebuilds it from)."""
    return {
        "model": name,
        "kind": "learned_optimizer",
        "settings": dataclasses.asdict(config),
        "n_layers": n_layers,
        "avg_log_degree": avg_log_degree,
        "kernel": kernel,
        "scale": scale,
        "momenta": list(MOMENTA),
    }


def load_optimizer(path) -> tuple[nn.Module, dict]:
    """A meta-trained optimizer saved by the ``l2o`` stage (safetensors + card; no pickle), in
    eval mode, and its card (its update ``scale``, the ``test`` metrics of its run)."""
    from pipeline.io import load_tensors
    from pipeline.saved import read_card

    card = read_card(path)
    if card.get("kind") != "learned_optimizer":
        raise ValueError(f"{path}: not a learned optimizer (kind {card.get('kind')!r})")
    if tuple(card["momenta"]) != MOMENTA:
        raise ValueError(f"{path}: saved with momenta {card['momenta']}, this code computes {list(MOMENTA)}")
    config = (FFConfig if card["model"] == "ff" else OptimizerConfig)(**card["settings"])
    optimizer = build_optimizer(
        card["model"], config, card["n_layers"], card.get("avg_log_degree", 1.0), card.get("kernel", 1)
    )
    optimizer.load_state_dict(load_tensors(path))
    return optimizer.eval(), card


# ---- from ``params.yaml``'s ``l2o`` section ------------------------------------------------


def settings_from(c: Any) -> L2OSettings:
    """The meta-training and evaluation settings of the ``l2o`` section."""
    meta = MetaSettings(c.outer_steps, c.unroll, c.horizon, c.n_optimizees, c.meta_lr, c.scale, c.grad_clip)
    return L2OSettings(meta, c.eval_steps, c.eval_nets)


def optimizer_config(c: Any, name: str) -> FFConfig | OptimizerConfig | BaselineConfig:
    """The settings of optimizer ``name`` in the ``l2o`` section (what enters its runs' fingerprints)."""
    if name in BASELINES:
        return BaselineConfig(tuple(c.baseline_lrs), c.momentum)
    if name == "ff":
        return FFConfig(c.ff_hidden)  # the graph settings do not enter its fingerprint
    return OptimizerConfig(c.graph_hidden, c.graph_layers, c.heads)


def load_data(c: Any, seed: int) -> L2OData:
    """The meta-training and test tasks of the ``l2o`` section, drawn from ``seed``."""

    def task(t: Any) -> Task:
        return make_task(t.source, t.pool, t.hidden, t.n_test, t.batch_size, seed, t.kind, t.kernel)

    return L2OData(task(c.meta_task), task(c.test_task))


def data_version(data: L2OData) -> str:
    """The content address of both tasks (spec, architecture, batch size and every tensor's bytes)."""
    return fingerprint(
        {
            name: {"spec": t.spec.to_dict(), "arch": t.arch and t.arch.to_dict(), "batch_size": t.batch_size}
            | {k: tensor_hash(getattr(t, k)) for k in ("x_train", "y_train", "x_test", "y_test")}
            for name, t in (("meta_task", data.meta_task), ("test_task", data.test_task))
        }
    )
