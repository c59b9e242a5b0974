"""The WS-KAN expressivity check: learn to run a KAN's forward pass from its KAN-graph.

Given the KAN-graph of a KAN-INR ``f`` and a query point ``p in [-1, 1]^2``, predict ``f(p)``.
The query rides on the two input nodes as extra features (:func:`query_features`); the target is
the KAN's own output, computed on the fly by :func:`pipeline.zoo.kan.kan_forward`.

Training draws fresh KANs and fresh query points every step, so the supply of (KAN, point)
pairs is unlimited in the points (a fixed set of two points per KAN was memorized within a few
epochs); validation and test KANs are held out and scored at fixed points. The control is
:func:`mean_kan_reference`, the best predictor that sees only the query point: the mean output
of the training KANs there. A model at its R² has not learned to read the KAN.

Every graph of a zoo shares one topology (:class:`~pipeline.graphs.neural_graph.GraphTemplate`),
so :func:`query_batch` builds a batch of ``B x Q`` (KAN, point) graphs with a few tensor
operations: no per-graph Python and no per-step collation. :func:`fit_forward` runs on any
device (``device=``): data, model and batches live there and a training step never reads a
value back to the host (the loss is summed on the device and read once per evaluation).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pipeline.graphs.neural_graph import GraphTemplate, graph_template, params_to_features
from pipeline.models import DataShape
from pipeline.train import RunResult
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import Params, ParamSpec
from pipeline.zoo.kan import kan_forward, kan_grid_order, uniform_grid

QUERY_FREQS = 4
QUERY_DIM = 1 + 2 * QUERY_FREQS


def query_features(p: Tensor) -> Tensor:
    """``(...)`` coordinates -> ``(..., 1 + 2F)``: ``[p, sin(pi f p), cos(pi f p)]`` for ``f = 1..F``.

    A single raw coordinate column next to the normalized weights was too weak a signal: no
    graph model moved off the mean (R² 0.00 after 1 200 steps); with these features they learn.
    """
    f = torch.arange(1, QUERY_FREQS + 1, dtype=p.dtype, device=p.device) * torch.pi
    pf = p.unsqueeze(-1) * f
    return torch.cat([p.unsqueeze(-1), torch.sin(pf), torch.cos(pf)], dim=-1)


@dataclass
class GraphBatch:
    """The attributes of a PyG ``Batch`` that graph metanetworks read (``B`` graphs, ``ΣN`` nodes)."""

    x: Tensor  # (ΣN, node_dim)
    edge_attr: Tensor  # (ΣE, edge_dim)
    edge_index: Tensor  # (2, ΣE) global node ids
    node_pos: Tensor  # (ΣN,)
    node_layer: Tensor  # (ΣN,)
    node_out: Tensor  # (ΣN,) bool
    batch: Tensor  # (ΣN,) graph of each node
    num_graphs: int


@dataclass(frozen=True)
class ForwardData:
    """A KAN-INR zoo ready for the forward task.

    Attributes:
        spec, template: the zoo's KAN spec and its KAN-graph topology (``N`` nodes, ``E`` edges).
        params: raw parameters of every KAN (targets are their forward passes).
        nodes, edges: ``(n, N, node_dim)``, ``(n, E, edge_dim)`` KAN-graph features, normalized
            with training-split statistics.
        splits: ``{"train" | "val" | "test": (m,) KAN indices}``.
        grid_range: ``(lo, hi)`` when every grid is :func:`~pipeline.zoo.kan.uniform_grid` on it
            (the fast spline path), else ``None`` (each node's own knots).
    """

    spec: ParamSpec
    template: GraphTemplate
    params: Params
    nodes: Tensor
    edges: Tensor
    splits: dict[str, Tensor]
    grid_range: tuple[float, float] | None

    @staticmethod
    def build(params: Params, spec: ParamSpec, splits: dict[str, Tensor], grid_range: tuple[float, float]):
        """Normalize with the training split's statistics and lay out the KAN-graph features.

        ``grid_range`` is kept only if every stored grid is the uniform one on it.
        """
        G, k = kan_grid_order(spec)
        uniform = all(
            torch.allclose(params[t.name], uniform_grid(t.shape[0], G, k, *grid_range).expand_as(params[t.name]))
            for t in spec.tensors
            if t.name.endswith(".grid")
        )
        stats = fit_stats({k: v[splits["train"]] for k, v in params.items()}, spec)
        template = graph_template(spec)
        nodes, edges = params_to_features(apply_stats(params, spec, stats), template)
        return ForwardData(spec, template, params, nodes, edges, splits, grid_range if uniform else None)

    def to(self, device: torch.device | str) -> ForwardData:
        """Every tensor (parameters, features, splits, the template's indices) on ``device``."""
        return dataclasses.replace(
            self,
            template=self.template.to(device),
            params={k: v.to(device) for k, v in self.params.items()},
            nodes=self.nodes.to(device),
            edges=self.edges.to(device),
            splits={k: v.to(device) for k, v in self.splits.items()},
        )

    @property
    def node_dim(self) -> int:
        """Node feature width including the query columns."""
        return self.nodes.shape[-1] + QUERY_DIM

    def shape(self) -> DataShape:
        """What a graph model needs to know: widths, positions, one regression target."""
        t = self.template
        deg = torch.bincount(t.edge_index[1], minlength=t.n_nodes).double()
        n_out = t.spec.layer_sizes[-1]
        return DataShape(
            t.spec.n_params, self.node_dim, t.edge_dim, t.n_pos, n_out, 1, float(deg.log1p().mean()), template=t
        )


def kan_outputs(data: ForwardData, kans: Tensor, points: Tensor) -> Tensor:
    """The KANs' own outputs: ``kans`` ``(B,)``, ``points`` ``(B, Q, 2)`` -> ``(B, Q)``."""
    with torch.no_grad():
        sub = {k: v[kans] for k, v in data.params.items()}
        return kan_forward(sub, data.spec, points, uniform=data.grid_range)[..., 0]


def query_batch(data: ForwardData, kans: Tensor, points: Tensor) -> GraphBatch:
    """One KAN-graph per (KAN, query point), ``B x Q`` graphs in KAN-major order.

    Input node ``i`` of graph ``(b, q)`` gets :func:`query_features` of ``points[b, q, i]``
    appended to its features; every other node gets zeros there. Built on ``data``'s device
    (``kans`` and ``points`` must be there too) from sizes known on the host: no synchronisation.

    Args:
        kans: ``(B,)`` KAN indices; points: ``(B, Q, n_in)``.
    """
    B, Q = points.shape[:2]
    G = B * Q
    t = data.template
    N, E = t.n_nodes, t.n_edges
    n_in = t.spec.layer_sizes[0]
    x = data.nodes[kans].repeat_interleave(Q, dim=0)  # (G, N, node_dim)
    q = x.new_zeros(G, N, QUERY_DIM)
    q[:, :n_in] = query_features(points.reshape(G, -1))  # input neurons are nodes 0 .. n_in - 1
    offsets = torch.arange(G, device=x.device) * N
    return GraphBatch(
        x=torch.cat([x, q], dim=-1).reshape(G * N, -1),
        edge_attr=data.edges[kans].repeat_interleave(Q, dim=0).reshape(G * E, -1),
        edge_index=(t.edge_index.unsqueeze(1) + offsets.view(1, G, 1)).reshape(2, G * E),
        node_pos=t.node_pos.repeat(G),
        node_layer=t.node_layer.repeat(G),
        node_out=(t.node_layer == t.spec.n_layers).repeat(G),
        batch=torch.arange(G, device=x.device).repeat_interleave(N),
        num_graphs=G,
    )


def mean_kan_reference(data: ForwardData, points: Tensor, chunk: int = 250) -> Tensor:
    """The position-only predictor: mean output of all training KANs at ``points`` ``(..., 2)``."""
    flat = points.reshape(1, -1, points.shape[-1])
    train = data.splits["train"]
    total = torch.zeros(flat.shape[1], device=points.device)
    for start in range(0, len(train), chunk):
        kans = train[start : start + chunk]
        total += kan_outputs(data, kans, flat.expand(len(kans), -1, -1)).sum(0)
    return (total / len(train)).view(points.shape[:-1])


def random_points(n: int, q: int, n_in: int, gen: torch.Generator) -> Tensor:
    """``(n, q, n_in)`` uniform query points in ``[-1, 1]``, drawn on the CPU (``gen``'s device)."""
    return torch.rand(n, q, n_in, generator=gen) * 2 - 1


def regression_metrics(pred: Tensor, y: Tensor) -> dict[str, float]:
    """``mse``, ``r2`` (1 - SSE / SST) and ``rel_rmse`` (RMSE over the targets' std) of flat predictions."""
    sse = float((pred - y).square().sum())
    sst = float((y - y.mean()).square().sum())
    return {"mse": sse / y.numel(), "r2": 1.0 - sse / max(sst, 1e-12), "rel_rmse": math.sqrt(sse / max(sst, 1e-12))}


@dataclass(frozen=True)
class ForwardSettings:
    """Step-based training on fresh (KAN, point) pairs.

    ``steps`` AdamW steps of ``kans_per_step x points_per_kan`` graphs, one-cycle learning rate
    (peak ``lr``); every ``eval_every`` steps (one "epoch" in the history) the validation KANs
    are scored at ``eval_points`` fixed points each.
    """

    steps: int = 2000
    kans_per_step: int = 32
    points_per_kan: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    eval_every: int = 250
    eval_points: int = 16


def settings_from(cfg) -> ForwardSettings:
    """:class:`ForwardSettings` from a config section with the same field names (``kan.forward``)."""
    return ForwardSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ForwardSettings)})


@dataclass
class ForwardResult(RunResult):
    """:class:`~pipeline.train.RunResult` (history per evaluation, test metrics in target units at
    the best validation evaluation) plus the position-only reference's test metrics."""

    select: str = "r2"
    reference: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def predict(model: nn.Module, data: ForwardData, kans: Tensor, points: Tensor, mean: float, std: float) -> Tensor:
    """Model predictions ``(B, Q)`` in target units (dropout off), in chunks of 64 KANs."""
    model.eval()
    out = [
        model(query_batch(data, kans[s : s + 64], points[s : s + 64])).view(-1, points.shape[1])
        for s in range(0, len(kans), 64)
    ]
    return torch.cat(out) * std + mean


def fit_forward(
    model: nn.Module,
    data: ForwardData,
    settings: ForwardSettings,
    seed: int,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    device: torch.device | str = "cpu",
) -> ForwardResult:
    """Train ``model`` (graphs -> ``(G, 1)``) on the forward task; select on validation R².

    Targets are standardized with the mean and std of the training KANs' outputs at random
    points. The test split is scored only when validation R² improves (test metrics at the
    best validation evaluation), beside :func:`mean_kan_reference` on the same test points.

    ``model`` and ``data`` are moved to ``device`` (the model stays there, with the best
    validation state loaded). Random draws are made on the CPU with the seeded generator (the
    same numbers on every device) and copied over without blocking; a training step reads
    nothing back: the loss is summed in a float64 device tensor and read once per evaluation,
    where a non-finite sum raises :class:`FloatingPointError`. Metrics are Python floats.
    """
    device = torch.device(device)
    model.to(device)
    data = data.to(device)
    gen = torch.Generator().manual_seed(seed)
    n_in = data.spec.layer_sizes[0]
    train = data.splits["train"]

    def draw_points(n: int, q: int) -> Tensor:
        return random_points(n, q, n_in, gen).to(device, non_blocking=True)

    y0 = kan_outputs(data, train, draw_points(len(train), 8))
    mean, std = float(y0.mean()), float(y0.std().clamp_min(1e-8))
    fixed = {s: draw_points(len(data.splits[s]), settings.eval_points) for s in ("val", "test")}
    targets = {s: kan_outputs(data, data.splits[s], fixed[s]) for s in fixed}
    ref = mean_kan_reference(data, fixed["test"])
    res = ForwardResult(
        n_params=sum(p.numel() for p in model.parameters()),
        reference=regression_metrics(ref.flatten(), targets["test"].flatten()),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.05)
    best_state, train_time, t0 = None, 0.0, time.time()
    tot = torch.zeros((), dtype=torch.float64, device=device)  # same sums as Python floats of loss.item()
    for step in range(1, settings.steps + 1):
        model.train()
        pick = torch.randint(len(train), (settings.kans_per_step,), generator=gen)
        kans = train[pick.to(device, non_blocking=True)]
        points = draw_points(settings.kans_per_step, settings.points_per_kan)
        y = (kan_outputs(data, kans, points) - mean) / std
        loss = nn.functional.mse_loss(model(query_batch(data, kans, points)).view_as(y), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        tot += loss.detach().double()
        if step % settings.eval_every and step != settings.steps:
            continue
        train_time += time.time() - t0
        loss_sum = float(tot)  # the one read of the training loss per evaluation
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} by step {step}")
        n = step - (len(res.history) * settings.eval_every)
        val = regression_metrics(
            predict(model, data, data.splits["val"], fixed["val"], mean, std).flatten(), targets["val"].flatten()
        )
        row = {"epoch": len(res.history) + 1, "step": step, "train_loss": loss_sum / n, "lr": sched.get_last_lr()[0]}
        row |= {f"val_{k}": v for k, v in val.items()}
        if row["val_r2"] > res.best_val:
            res.best_val, res.best_epoch = row["val_r2"], row["epoch"]
            best_state = copy.deepcopy(model.state_dict())
            pred = predict(model, data, data.splits["test"], fixed["test"], mean, std)
            res.test = regression_metrics(pred.flatten(), targets["test"].flatten())
        row["test_r2_at_best_val"] = res.test["r2"]
        row["epoch_seconds"] = time.time() - t0
        res.history.append(row)
        if on_eval is not None:
            on_eval(row)
        tot.zero_()
        t0 = time.time()
    if best_state is not None:
        model.load_state_dict(best_state)
        res.best_state = {k: v.detach().to("cpu", copy=True) for k, v in best_state.items()}
    res.seconds_per_epoch = train_time / max(len(res.history), 1)
    return res
