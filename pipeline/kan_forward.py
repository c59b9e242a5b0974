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
operations: no per-graph Python and no per-step collation. :func:`fit_forward` trains with the
project's one loop (:func:`pipeline.train.fit_model`, any device), fed by a
:class:`QueryStream` of fresh pairs and scored on :class:`FixedQueries`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.config import ConfigError
from pipeline.device import from_host
from pipeline.graphs.neural_graph import GraphBatch, GraphTemplate, graph_template, params_to_features, uniform_batch
from pipeline.models import DataShape, build_model
from pipeline.runs import TaskContext
from pipeline.saved import model_card
from pipeline.tasks.job import result_dict
from pipeline.train import Regression, RunResult, TrainSettings, fit_model
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import Params, ParamSpec
from pipeline.zoo.kan import kan_forward, kan_grid_order, uniform_grid
from pipeline.zoo.kan_zoo import GRID_RANGE, load_kan_zoo

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
    N = t.n_nodes
    n_in = t.spec.layer_sizes[0]
    x = data.nodes[kans].repeat_interleave(Q, dim=0)  # (G, N, node_dim)
    q = x.new_zeros(G, N, QUERY_DIM)
    q[:, :n_in] = query_features(points.reshape(G, -1))  # input neurons are nodes 0 .. n_in - 1
    e = data.edges[kans].repeat_interleave(Q, dim=0)  # (G, E, edge_dim)
    return uniform_batch(t, torch.cat([x, q], dim=-1), e)


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
    compile: bool = False


def settings_from(cfg) -> ForwardSettings:
    """:class:`ForwardSettings` from a config section with the same field names (``kan.forward``)."""
    return ForwardSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ForwardSettings)})


@dataclass
class ForwardResult(RunResult):
    """:class:`~pipeline.train.RunResult` (history per evaluation, test metrics in target units at
    the best validation evaluation) plus the position-only reference's test metrics."""

    select: str = "r2"
    reference: dict[str, float] = field(default_factory=dict)


@dataclass
class QueryStream:
    """Training batches for :func:`~pipeline.train.fit_model`: every step ``kans_per_step``
    training KANs and ``points_per_kan`` query points each, drawn afresh; ``y`` ``(K, P)`` are the
    KANs' own outputs. One "epoch" is ``eval_every`` steps (the last one what remains of ``steps``)."""

    data: ForwardData
    settings: ForwardSettings
    done: int = 0  # steps drawn so far

    def to(self, device: torch.device | str) -> QueryStream:
        return dataclasses.replace(self, data=self.data.to(device))

    def epoch_batches(self, batch_size: int, gen: torch.Generator) -> Iterator[tuple[GraphBatch, Tensor]]:
        s, train = self.settings, self.data.splits["train"]
        n_in = self.data.spec.layer_sizes[0]
        # every step's draws of this block, in the order one step at a time makes them, moved in
        # one transfer each: no step copies from the host
        draws = []
        for _ in range(min(s.eval_every, s.steps - self.done)):
            pick = torch.randint(len(train), (s.kans_per_step,), generator=gen)
            draws.append((pick, random_points(s.kans_per_step, s.points_per_kan, n_in, gen)))
        if not draws:
            return
        picks = torch.stack([p for p, _ in draws]).to(train.device)
        all_points = torch.stack([q for _, q in draws]).to(train.device)
        for pick, points in zip(picks, all_points, strict=True):
            kans = train[pick]
            self.done += 1
            yield query_batch(self.data, kans, points), kan_outputs(self.data, kans, points)


@dataclass(frozen=True)
class FixedQueries:
    """Held-out KANs at fixed query points, one (KAN, point) graph per item: ``kans`` ``(n,)``,
    ``points`` ``(n, Q, n_in)``, ``y`` ``(n Q,)`` their outputs, KAN-major (for
    :func:`~pipeline.train.evaluate`)."""

    data: ForwardData
    kans: Tensor
    points: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(self, idx: Tensor) -> GraphBatch:
        Q = self.points.shape[1]
        k = idx // Q
        return query_batch(self.data, self.kans[k], self.points[k, idx % Q].unsqueeze(1))

    def to(self, device: torch.device | str) -> FixedQueries:
        return FixedQueries(self.data.to(device), self.kans.to(device), self.points.to(device), self.y.to(device))


def fit_forward(
    model: nn.Module,
    data: ForwardData,
    settings: ForwardSettings,
    seed: int,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    device: torch.device | str = "cpu",
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> ForwardResult:
    """Train ``model`` (graphs -> ``(G, 1)``) on the forward task with
    :func:`~pipeline.train.fit_model`; select on validation R².

    Targets are standardized with the mean and std of the training KANs' outputs at random
    points (:class:`~pipeline.train.Regression`). Training batches are a :class:`QueryStream`,
    validation and test KANs :class:`FixedQueries`; the learning rate follows a one-cycle
    schedule (peak ``lr``, 5 % warm-up). Test metrics are those at the best validation
    evaluation, beside :func:`mean_kan_reference` on the same test points. Random draws are
    made on the CPU with one generator seeded with ``seed`` (the same numbers on every device).
    Each history row has the ``step`` it was evaluated at. ``resume`` / ``on_checkpoint``: per-
    evaluation resume, as in :func:`~pipeline.train.fit_model`.
    """
    device = torch.device(device)
    data = data.to(device)  # once: the stream and the fixed queries share it
    gen = torch.Generator().manual_seed(seed)
    n_in = data.spec.layer_sizes[0]
    train = data.splits["train"]

    def draw_points(n: int, q: int) -> Tensor:
        return from_host(random_points(n, q, n_in, gen), device)

    y0 = kan_outputs(data, train, draw_points(len(train), 8))
    objective = Regression(y0.mean().reshape(1), y0.std().clamp_min(1e-8).reshape(1))
    fixed = {}
    for split in ("val", "test"):
        kans, points = data.splits[split], draw_points(len(data.splits[split]), settings.eval_points)
        fixed[split] = FixedQueries(data, kans, points, kan_outputs(data, kans, points).flatten())
    ref = mean_kan_reference(data, fixed["test"].points).flatten()
    reference = objective.metrics(((ref - objective.mean) / objective.std).unsqueeze(1), fixed["test"].y)

    def on_epoch(row: dict) -> None:
        row["step"] = min(row["epoch"] * settings.eval_every, settings.steps)
        if on_eval is not None:
            on_eval(row)

    train_settings = TrainSettings(
        epochs=math.ceil(settings.steps / settings.eval_every),
        batch_size=settings.kans_per_step,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=0,
        grad_clip=settings.grad_clip,
        compile=settings.compile,
    )

    def one_cycle(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.05)

    res = fit_model(
        model,
        QueryStream(data, settings),
        fixed["val"],
        fixed["test"],
        train_settings,
        seed,
        objective,
        on_epoch=on_epoch,
        device=device,
        generator=gen,
        schedule=one_cycle,
        resume=resume,
        on_checkpoint=on_checkpoint,
    )
    fields = {f.name: getattr(res, f.name) for f in dataclasses.fields(RunResult)}
    return ForwardResult(**fields, reference=reference)


# --------------------------------------------------------------------------------------------
# The expressivity-check runs (stage ``kan_forward``): the zoo as ForwardData, one (model, seed) job
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def load_forward_data(zoo_dir: str | Path) -> ForwardData:
    """The KAN-INR zoo (hashes checked) as a :class:`ForwardData`, non-finite nets left out."""
    spec, params, rows, _ = load_kan_zoo(zoo_dir)
    finite = torch.ones(len(rows), dtype=torch.bool)
    for v in params.values():
        finite &= torch.isfinite(v.flatten(1)).all(1)
    splits = {s: torch.tensor([i for i, r in enumerate(rows) if r["split"] == s and bool(finite[i])]) for s in SPLITS}
    for s, idx in splits.items():
        if idx.numel() == 0:
            raise SystemExit(f"kan_forward: no usable KAN in split {s!r} of {zoo_dir}")
    return ForwardData.build(params, spec, splits, GRID_RANGE)


def forward_one(
    data: ForwardData, model_name: str, model_cfg, seed: int, ctx: TaskContext, settings: ForwardSettings
) -> dict:
    """Build and train one model on the forward task; return its result as a plain dict."""
    device, where = ctx.start()
    torch.manual_seed(seed)
    model = build_model(model_name, model_cfg, data.shape())
    if getattr(model, "input_kind", None) != "graph":
        raise ConfigError(f"kan.forward.models: {model_name!r} does not read graphs")
    t0 = time.time()

    progress = ctx.reporter(f"kan_forward {model_name} seed {seed}", "r2", settings.steps, unit="step")
    res = fit_forward(model, data, settings, seed, on_eval=progress, device=device, **ctx.resumable({}))
    out = result_dict(res, model_name, seed, model_cfg, time.time() - t0)
    out["card"] = model_card(model_name, model_cfg, data.shape(), {"spec": data.spec.to_dict()}, None)
    out["counts"] = {s: int(v.numel()) for s, v in data.splits.items()}
    return out | where


def final_metrics(r: dict) -> dict[str, float]:
    return {
        **{f"test_{k}": v for k, v in r["test"].items()},
        **{f"reference_test_{k}": v for k, v in r["reference"].items()},
        "best_val_r2": r["best_val"],
        "best_epoch": r["best_epoch"],
        "n_params": r["n_params"],
        "seconds_per_epoch": r["seconds_per_epoch"],
    }
