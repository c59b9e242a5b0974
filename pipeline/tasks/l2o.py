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

Optimizees are batched ReLU MLP classifiers (:func:`pipeline.zoo.adapt_zoo.mlp_forward`): ``B``
nets of one :class:`~pipeline.weightspace.spec.ParamSpec` as one flat ``(B, P)`` tensor.
:func:`unroll` runs ``k`` steps and returns the training losses; meta-training backpropagates
through the updates (first order: gradients of the optimizee enter as features, detached) and
never across a truncation boundary (:func:`unroll` detaches its starting state).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.graphs.neural_graph import GraphTemplate, features_to_params, graph_template, params_to_features
from pipeline.graphs.store import GraphSet
from pipeline.weightspace.spec import ParamSpec, flatten, unflatten
from pipeline.zoo.adapt_zoo import mlp_forward

MOMENTA = (0.5, 0.9, 0.99, 0.999)
N_FEATURES = 2 * (1 + len(MOMENTA))
PREPROCESS_P = 10.0


def preprocess(x: Tensor, p: float = PREPROCESS_P) -> Tensor:
    """Andrychowicz et al.'s log / sign preprocessing: ``(...)`` -> ``(..., 2)``."""
    big = x.abs() >= math.exp(-p)
    log = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    sign = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([log, sign], dim=-1)


def update_moments(moments: Tensor, grad: Tensor, betas: tuple[float, ...] = MOMENTA) -> Tensor:
    """``m_beta <- beta m_beta + (1 - beta) g`` for every beta: ``(B, P, M)``, ``(B, P)`` -> ``(B, P, M)``."""
    b = torch.tensor(betas, dtype=grad.dtype, device=grad.device)
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

    def forward(self, features: Tensor, template: GraphTemplate | None = None) -> Tensor:
        return self.mlp(features)


def feature_graphs(features: Tensor, template: GraphTemplate) -> GraphSet:
    """The neural graphs of ``B`` nets whose node / edge features are the per-parameter feature
    channels ``(B, P, C)`` (input neurons, which have no bias, get zeros)."""
    spec = template.spec
    one = dataclasses.replace(template, node_dim=1, edge_dim=1)
    xs, es = zip(
        *(params_to_features(unflatten(features[..., c], spec), one) for c in range(features.shape[-1])), strict=True
    )
    B = features.shape[0]
    base = GraphSet.from_params(unflatten(features[..., 0], spec), template, torch.zeros(B), torch.arange(B))
    return dataclasses.replace(base, x=torch.cat(xs, -1).flatten(0, 1), edge_attr=torch.cat(es, -1).flatten(0, 1))


def graph_to_parameters(node: Tensor, edge: Tensor, template: GraphTemplate) -> Tensor:
    """Per-node ``(B, N, K)`` and per-edge ``(B, E, K)`` values -> per-parameter ``(B, P, K)``
    (the inverse of the graph construction, channel by channel)."""
    one = dataclasses.replace(template, node_dim=1, edge_dim=1)
    chans = [
        flatten(features_to_params(node[..., k : k + 1], edge[..., k : k + 1], one), template.spec)
        for k in range(node.shape[-1])
    ]
    return torch.stack(chans, dim=-1)


def layer_template(spec: ParamSpec) -> GraphTemplate:
    """The neural graph of ``spec`` with one positional id per neuron *layer* (input neurons
    share one too), so that an optimizer meta-trained on one width of net runs on another."""
    t = graph_template(spec)
    return dataclasses.replace(t, node_pos=t.node_layer.clone(), n_pos=spec.n_layers + 1)


class GraphOptimizer(nn.Module):
    r"""FF + a neural-graph encoder: :math:`u_i = \mathrm{MLP}([\phi_i, c_i])` with :math:`c_i`
    from the encoder's final states: :math:`W_n x_v` for the bias of neuron ``v``,
    :math:`W_e [e_{uv}, x_u, x_v]` for the weight of edge ``u -> v``. The graphs carry one
    positional id per neuron layer (:func:`layer_template`), so one optimizer runs on nets of any
    width with ``n_layers`` parameter layers.

    Args:
        n_layers: parameter layers of the optimizees.  encoder: ``"ng_gnn"`` or ``"ng_t"``.
        hidden: the encoder's and the MLP's width.  layers: encoder layers.
    Shapes: features ``(B, P, C)`` and the optimizees' :func:`layer_template` -> updates ``(B, P)``.
    """

    def __init__(self, n_layers: int, encoder: str = "ng_gnn", hidden: int = 32, layers: int = 2):
        super().__init__()
        n_pos = n_layers + 1
        if encoder == "ng_gnn":
            from pipeline.models.ng_gnn import NGGNNEncoder

            self.encoder = NGGNNEncoder(N_FEATURES, N_FEATURES, n_pos, 1, hidden, layers, fourier_features=0)
        elif encoder == "ng_t":
            from pipeline.models.ng_t import NGTEncoder

            self.encoder = NGTEncoder(N_FEATURES, N_FEATURES, n_pos, hidden, layers, heads=4)
        else:
            raise ValueError(f"unknown encoder {encoder!r}; choose from ('ng_gnn', 'ng_t')")
        self.node_ctx = nn.Linear(hidden, hidden)
        self.edge_ctx = nn.Linear(3 * hidden, hidden)
        self.mlp = PerParameterMLP(N_FEATURES + hidden, hidden)

    def forward(self, features: Tensor, template: GraphTemplate) -> Tensor:
        t, B = template, features.shape[0]
        graphs = feature_graphs(features, t)
        x, e, src, dst, order = self.encoder(graphs.batch(torch.arange(B, device=features.device)))
        node = self.node_ctx(x)
        edge = self.edge_ctx(torch.cat([e, x.index_select(0, src), x.index_select(0, dst)], dim=1))
        edge = edge.new_zeros(edge.shape).index_copy(0, order, edge)  # back to the batch's edge order
        ctx = graph_to_parameters(node.view(B, t.n_nodes, -1), edge.view(B, t.n_edges, -1), t)
        return self.mlp(torch.cat([features, ctx], dim=-1))


# --------------------------------------------------------------------------------------------
# Optimizees, unrolls and the hand-written baselines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A classification task for ``B`` optimizees of ``spec``: shared training and test data."""

    spec: ParamSpec
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    batch_size: int = 64


def batch_losses(flat: Tensor, task: Task, idx: Tensor) -> Tensor:
    """Per-net cross-entropy on the training examples ``idx`` ``(B, b)``: ``(B,)``."""
    logits = mlp_forward(unflatten(flat, task.spec), task.spec, task.x_train[idx])
    return F.cross_entropy(logits.flatten(0, 1), task.y_train[idx].flatten(), reduction="none").view(idx.shape).mean(1)


def batch_indices(task: Task, gens: list[torch.Generator], device: torch.device) -> Tensor:
    """``(B, batch_size)`` training examples, one row per net from its own generator."""
    n = task.y_train.shape[0]
    return torch.stack([torch.randint(n, (task.batch_size,), generator=g) for g in gens]).to(device)


@dataclass
class OptState:
    """Where ``B`` optimizees are: parameters ``(B, P)`` and momenta ``(B, P, M)``."""

    flat: Tensor
    moments: Tensor


def unroll(
    optimizer: nn.Module, state: OptState, task: Task, steps: int, gens: list[torch.Generator], scale: float
) -> tuple[OptState, Tensor]:
    """``steps`` learned-optimizer steps from ``state`` (detached: no gradient crosses into an
    earlier unroll). Returns the new state (attached to the optimizer's parameters) and the
    training losses ``(steps, B)`` measured before each update, each a function of the updates
    before it."""
    flat, moments = state.flat.detach().requires_grad_(True), state.moments.detach()
    template = layer_template(task.spec)
    losses = []
    for _ in range(steps):
        idx = batch_indices(task, gens, flat.device)
        loss = batch_losses(flat, task, idx)
        (grad,) = torch.autograd.grad(loss.sum(), flat, retain_graph=True)
        grad = grad.detach()  # first order: the optimizee's gradient is an input
        moments = update_moments(moments, grad)
        flat = flat + scale * optimizer(optimizer_features(grad, moments), template)
        losses.append(loss)
    return OptState(flat, moments), torch.stack(losses)


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
    arithmetic, :func:`pipeline.zoo.kan.adam_update`) or SGD with heavy-ball momentum
    (``torch.optim.SGD``'s). Returns the final parameters and the losses ``(steps, B)``."""
    from pipeline.zoo.kan import AdamSettings, adam_update

    if method not in ("adam", "sgd"):
        raise ValueError(f"unknown baseline {method!r}; choose from ('adam', 'sgd')")
    flat = flat.detach().clone()
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    lrs = torch.full((flat.shape[0],), float(lr), device=flat.device)
    settings = AdamSettings(steps)
    losses = []
    for step in range(1, steps + 1):
        flat.requires_grad_(True)
        loss = batch_losses(flat, task, batch_indices(task, gens, flat.device))
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
    logits = mlp_forward(unflatten(flat, task.spec), task.spec, task.x_test)
    return (logits.argmax(-1) == task.y_test).float().mean(1)


# --------------------------------------------------------------------------------------------
# Meta-training and evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaSettings:
    """Truncated meta-training: ``outer_steps`` updates of the optimizer (Adam, ``lr``), each on
    the mean training loss of ``n_optimizees`` nets over one unroll of ``unroll`` steps; a net is
    re-initialized after ``horizon`` steps. ``scale``: the update's output scale."""

    outer_steps: int = 200
    unroll: int = 10
    horizon: int = 100
    n_optimizees: int = 8
    lr: float = 1e-3
    scale: float = 1e-2
    grad_clip: float = 1.0


def init_optimizees(spec: ParamSpec, seeds: list[int]) -> Tensor:
    """He-uniform weights and zero biases (:func:`pipeline.zoo.adapt_zoo.init_pair_mlps`), flat ``(B, P)``."""
    from pipeline.zoo.adapt_zoo import init_pair_mlps

    return flatten(init_pair_mlps(spec, seeds), spec)


def fresh_state(spec: ParamSpec, seeds: list[int]) -> tuple[OptState, list[torch.Generator]]:
    """New optimizees from ``seeds`` (zero momenta) and their batch generators."""
    flat = init_optimizees(spec, seeds)
    return OptState(flat, flat.new_zeros(*flat.shape, len(MOMENTA))), [
        torch.Generator().manual_seed(s + 1) for s in seeds
    ]


def meta_train(optimizer: nn.Module, task: Task, settings: MetaSettings, seed: int, on_step=None) -> list[float]:
    """Meta-train ``optimizer`` on ``task``; returns the meta-loss of every outer step."""
    s = settings
    meta_opt = torch.optim.Adam(optimizer.parameters(), lr=s.lr)
    history, state, gens, t, k = [], None, [], s.horizon, 0
    for outer in range(s.outer_steps):
        if t >= s.horizon:
            seeds = [seed * 1_000_003 + k * s.n_optimizees + b for b in range(s.n_optimizees)]
            state, gens = fresh_state(task.spec, seeds)
            t, k = 0, k + 1
        state, losses = unroll(optimizer, state, task, s.unroll, gens, s.scale)
        meta = losses[1:].mean()  # the first loss is measured before any update of this unroll
        meta_opt.zero_grad(set_to_none=True)
        meta.backward()
        nn.utils.clip_grad_norm_(optimizer.parameters(), s.grad_clip)
        meta_opt.step()
        t += s.unroll
        history.append(float(meta))
        if on_step is not None:
            on_step(outer, float(meta))
    return history


def evaluate_optimizer(
    optimizer: nn.Module, task: Task, steps: int, seeds: list[int], scale: float
) -> dict[str, float]:
    """Train fresh optimizees from ``seeds`` for ``steps`` steps with ``optimizer`` (no meta-gradient):
    the mean final training loss (last 10 steps) and held-out test accuracy, and the loss curve."""
    state, gens = fresh_state(task.spec, seeds)
    curve = []
    for _ in range(0, steps, 10):
        state, losses = unroll(optimizer, state, task, min(10, steps - len(curve)), gens, scale)
        state = OptState(state.flat.detach(), state.moments.detach())
        curve += losses.detach().mean(1).tolist()
    acc = held_out_accuracy(state.flat, task)
    return {"final_loss": sum(curve[-10:]) / len(curve[-10:]), "test_acc": float(acc.mean()), "curve": curve}
