"""One training loop for any (metanetwork, task): classification or regression.

Model selection is on a validation metric (accuracy, or R² for regression); the test split is
evaluated only at epochs where it improves, and the reported test metrics are those of the
best validation epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from pipeline.device import from_host
from pipeline.graphs.neural_graph import GraphTemplate
from pipeline.graphs.store import GraphSet
from pipeline.models import DataShape
from pipeline.weightspace.forward import ForwardSpec
from pipeline.weightspace.spec import ParamSpec, flatten


@dataclass
class FlatSet:
    """Flattened parameter vectors ``(G, P)`` and targets, batched by index."""

    flat: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.flat.shape[0])

    def batch(self, idx: Tensor) -> Tensor:
        return self.flat[idx]

    def to(self, device: torch.device | str) -> FlatSet:
        return FlatSet(self.flat.to(device), self.y.to(device))


def model_inputs(graphs: GraphSet, template: GraphTemplate, kind: str) -> FlatSet | GraphSet:
    """The view of a split that a model with ``input_kind == kind`` consumes."""
    if kind == "graph":
        return graphs
    if kind == "flat":
        return FlatSet(flatten(graphs.to_params(template), template.spec), graphs.y)
    raise ValueError(f"unknown input kind {kind!r}")


def data_shape(
    train: GraphSet, template: GraphTemplate | None, n_classes: int, forward_spec: ForwardSpec | None = None
) -> DataShape:
    """Sizes a model needs, with PNA's mean log-degree computed on the training graphs.

    ``template`` is ``None`` for a zoo of several architectures: the positional ids, output
    neurons and parameter layers are then read from the graphs (the deepest), and models that
    need one :class:`~pipeline.weightspace.spec.ParamSpec` cannot be built.
    """
    deg = torch.bincount(
        train.edge_index[1] + torch.repeat_interleave(train.node_ptr[:-1], train.edge_ptr[1:] - train.edge_ptr[:-1]),
        minlength=train.x.shape[0],
    )
    if template is not None:
        n_params, n_pos, n_out = template.spec.n_params, template.n_pos, template.spec.layer_sizes[-1]
    else:
        n_params, n_pos = 0, int(train.node_pos.max()) + 1
        n_out = int(train.node_out[int(train.node_ptr[0]) : int(train.node_ptr[1])].sum())
    return DataShape(
        n_params=n_params,
        node_dim=train.x.shape[1],
        edge_dim=train.edge_attr.shape[1],
        n_pos=n_pos,
        n_out=n_out,
        n_classes=n_classes,
        avg_log_degree=float(torch.log1p(deg.double()).mean()),
        forward_spec=forward_spec,
        template=template,
        n_layers=int(train.node_layer.max()),
    )


def forward_spec_from_meta(meta: dict) -> ForwardSpec:
    """The zoo's forward pass and normalization, as written by the graphs stage."""
    spec = ParamSpec.from_dict(meta["spec"])
    stats = meta["norm_stats"]
    L = spec.n_layers
    return ForwardSpec(
        activation=meta["forward"]["activation"],
        omega0=float(meta["forward"]["omega0"]),
        output_offset=float(meta["forward"]["output_offset"]),
        weight_stats=tuple(tuple(stats[f"layers.{l}.weight"]) for l in range(L)),
        bias_stats=tuple(tuple(stats[f"layers.{l}.bias"]) for l in range(L)),
    )


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`fit_model` trains: epochs, batch size, AdamW's learning rate and weight decay,
    warm-up steps, the gradient-norm clip, and whether the model is compiled
    (:func:`compile_model`)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    compile: bool = False

    @classmethod
    def of(cls, section: Any) -> TrainSettings:
        """From a config section with these field names (``train``, ``edit``, ``cnn.train``, ...)."""
        return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Classification:
    """Cross-entropy; selection on accuracy."""

    n_classes: int
    select: str = "acc"
    maximize: bool = True

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out, y)

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        return {
            "loss": float(nn.functional.cross_entropy(out, y)),
            "acc": float((out.argmax(1) == y).float().mean()),
        }

    def items(self, out: Tensor, y: Tensor) -> Tensor:
        """Per test item: the predicted class ``(N,)``."""
        return out.argmax(1)


@dataclass(frozen=True)
class Regression:
    """MSE on targets standardized with training-split statistics; selection on R².

    Metrics are in the targets' own units: ``mse``, ``r2`` (1 - SSE / SST, pooled over
    targets), ``rel_rmse`` (sqrt(SSE / SST)) and, for a single target, Kendall's ``tau``
    between predictions and targets.
    """

    mean: Tensor
    std: Tensor
    select: str = "r2"
    maximize: bool = True

    @staticmethod
    def fit(y_train: Tensor) -> Regression:
        y = y_train.float().reshape(y_train.shape[0], -1)
        return Regression(y.mean(0), y.std(0).clamp_min(1e-8))

    def to(self, device: torch.device | str) -> Regression:
        return dataclasses.replace(self, mean=self.mean.to(device), std=self.std.to(device))

    @property
    def n_targets(self) -> int:
        return int(self.mean.numel())

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return nn.functional.mse_loss(out, (y.float().reshape(out.shape) - self.mean) / self.std)

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        y = y.float().reshape(out.shape)
        pred = out * self.std + self.mean
        sse = float((pred - y).square().sum())
        sst = float((y - y.mean(0)).square().sum())
        m = {"loss": self.loss(out, y).item(), "mse": sse / y.numel(), "r2": 1.0 - sse / max(sst, 1e-12)}
        m["rel_rmse"] = math.sqrt(sse / max(sst, 1e-12))  # RMSE over the targets' std: sqrt(1 - R²)
        if self.n_targets == 1:
            from scipy.stats import kendalltau

            m["tau"] = float(kendalltau(pred.flatten().cpu().numpy(), y.flatten().cpu().numpy()).statistic)
        return m

    def items(self, out: Tensor, y: Tensor) -> Tensor:
        """Per test item: the prediction in the targets' units, ``(N,)`` for one target, else ``(N, T)``."""
        pred = out * self.std + self.mean
        return pred.flatten() if self.n_targets == 1 else pred


class Objective(Protocol):
    """What :func:`fit_model` optimizes and selects on (:class:`Classification`, :class:`Regression`,
    :class:`pipeline.tasks.editing.Editing`)."""

    select: str  # the validation metric used for model selection
    maximize: bool  # whether a larger ``select`` metric is better

    def loss(self, out: Tensor, y: Tensor) -> Tensor: ...

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]: ...

    def items(self, out: Tensor, y: Tensor) -> Tensor:
        """What the test split's item ``i`` contributes to the metric (a predicted class, a
        prediction, an item's loss): kept per run for the report's paired bootstrap
        (:mod:`pipeline.stats`) and for error analysis."""
        ...


@dataclass
class RunResult:
    """Per-epoch history and the selected (best validation) epoch's metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    select: str = "acc"
    best_epoch: int = -1
    best_val: float = -math.inf
    test: dict[str, float] = field(default_factory=dict)
    n_params: int = 0
    seconds_per_epoch: float = 0.0
    best_state: dict[str, Tensor] | None = None  # the model's state at the best validation epoch (CPU)
    test_predictions: list = field(default_factory=list)  # per test item, at that epoch (Objective.items)


@torch.no_grad()
def split_outputs(model: nn.Module, data, batch_size: int = 512) -> Tensor:
    """The model's outputs over a whole split (dropout off), on the device the split lives on."""
    model.eval()
    return torch.cat([model(inputs) for inputs, _ in index_batches(data, torch.arange(len(data)), batch_size)])


def evaluate(model: nn.Module, data, objective: Objective, batch_size: int = 512) -> dict[str, float]:
    """The objective's metrics over a whole split (dropout off), on the device the split lives on."""
    return objective.metrics(split_outputs(model, data, batch_size), data.y)


def evaluate_items(
    model: nn.Module, data, objective: Objective, batch_size: int = 512
) -> tuple[dict[str, float], list]:
    """:func:`evaluate` and the split's per-item values (``objective.items``) as a nested list."""
    out = split_outputs(model, data, batch_size)
    return objective.metrics(out, data.y), objective.items(out, data.y).cpu().tolist()


def train_step(
    model: nn.Module, inputs, y: Tensor, objective: Objective, opt: torch.optim.Optimizer, grad_clip: float
) -> tuple[Tensor, Tensor]:
    """One optimizer step on one batch; returns ``(model output, detached loss)``.

    Nothing here reads a value back to the host, so a GPU step queues without waiting.
    """
    out = model(inputs)
    loss = objective.loss(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return out, loss.detach()


def to_device(objective: Objective, device: torch.device) -> Objective:
    """The objective with its tensors (target statistics) on ``device``."""
    move = getattr(objective, "to", None)
    return move(device) if move is not None else objective


def index_batches(data, order: Tensor, batch_size: int) -> Iterator[tuple[Any, Tensor]]:
    """``(inputs, y)`` for consecutive runs of ``batch_size`` items of ``order`` (a CPU tensor) of
    a split with ``batch(idx)`` and ``y``: ``order`` moves to the split's device once, and a
    split with its own ``batches`` (:meth:`~pipeline.graphs.store.GraphSet.batches`, whose
    batches of several architectures take their sizes from the host) makes them."""
    own = getattr(data, "batches", None)
    if own is not None:
        yield from own(order, batch_size)
        return
    on_device = from_host(order, data.y.device)
    for start in range(0, order.numel(), batch_size):
        idx = on_device[start : start + batch_size]
        yield data.batch(idx), data.y[idx]


def shuffled_batches(data, batch_size: int, gen: torch.Generator) -> Iterator[tuple[Any, Tensor]]:
    """One epoch over a fixed split (:class:`FlatSet`, :class:`~pipeline.graphs.store.GraphSet`):
    ``(inputs, y)`` batches in an order drawn on the CPU from ``gen`` (the same order on every
    device), moved to the split's device once per epoch (:func:`index_batches`): no step copies from
    the host or reads a size back."""
    yield from index_batches(data, torch.randperm(len(data), generator=gen), batch_size)


def make_adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters; on CUDA the fused kernel (one launch per step for every
    parameter, not a few per tensor: a small model's step is bound by launches), elsewhere the
    default (the CPU bytes of every run stay what they are)."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)


def compile_model(model: nn.Module, device: torch.device, static_shapes: bool) -> bool:
    """Compile ``model`` in place with ``torch.compile`` (its ``state_dict`` keys unchanged);
    return whether its steps run as CUDA graphs.

    On CUDA with ``static_shapes`` (every batch of a split has one shape: flat inputs, graphs of
    one template) the mode is ``reduce-overhead``: each step replays CUDA graphs, one launch for
    the whole forward and backward, where a small model's eager step is bound by kernel launches.
    Otherwise the default mode (fused kernels, shapes may vary). On the CPU the compiled model's
    numbers agree with the eager one's to float32 rounding, not bytewise (other fusions).
    """
    graphs = device.type == "cuda" and static_shapes
    model.compile(mode="reduce-overhead" if graphs else "default", dynamic=False if static_shapes else None)
    return graphs


def warmup_schedule(settings: TrainSettings) -> Callable[[torch.optim.Optimizer], LRScheduler]:
    """Linear warm-up over ``settings.warmup_steps`` steps, then the constant learning rate."""
    warm = max(settings.warmup_steps, 1)
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))


def fit_model(
    model: nn.Module,
    train,
    val,
    test,
    settings: TrainSettings,
    seed: int,
    objective: Objective,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    augment: Callable | None = None,
    on_best: Callable[[nn.Module], None] | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    schedule: Callable[[torch.optim.Optimizer], LRScheduler] | None = None,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> RunResult:
    """The one training loop: AdamW, a learning-rate schedule, gradient clipping, selection on
    the validation metric. It serves classification and regression of nets (``train``), INR
    editing (``edit``) and the KAN expressivity check (:func:`pipeline.kan_forward.fit_forward`).

    ``train`` is a fixed split (shuffled every epoch, :func:`shuffled_batches`) or any source
    with ``epoch_batches(batch_size, generator)`` yielding ``(inputs, y)`` (fresh samples every
    step); ``val`` and ``test`` have ``batch(idx)`` and ``y`` (:func:`evaluate`). The model and
    the three move to ``device`` once (a split that fits stays there). Random draws come from
    a CPU generator (``generator``, else one seeded with ``seed``), so a run is the same on any
    number of workers, and byte-identical on CPU. Per-step losses are summed on the device and
    read once per epoch: the step itself never waits for the device. ``schedule(optimizer)``
    makes the learning-rate scheduler, stepped once per step (default
    :func:`warmup_schedule`).

    The test split is evaluated only when the validation metric (``objective.select``; higher
    is better if ``objective.maximize``, else lower) improves; the reported test metrics are
    those of the best validation epoch, whose weights are kept (``best_state``) with the test
    split's per-item values (``test_predictions``: :meth:`Objective.items`), and
    ``on_best(model)`` is called then (e.g. to render examples). ``augment(inputs, generator)``
    transforms every training batch (never val/test). ``settings.compile`` compiles the model
    first (:func:`compile_model`).

    **Per-epoch resume.** After every epoch ``on_checkpoint(state)`` receives the whole training
    state (:func:`training_state`: model, optimizer, schedule, both random generators, the best
    epoch's weights and metrics, the history); ``resume=state`` continues after that epoch. On
    CPU a resumed run ends byte-identical to an uninterrupted one (same machine, same threads).
    """
    device = torch.device(device)
    model.to(device)
    train, val, test = train.to(device), val.to(device), test.to(device)
    objective = to_device(objective, device)
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    opt = make_adamw(model, settings.lr, settings.weight_decay, device)
    static = not isinstance(train, GraphSet) or train.uniform_sizes is not None
    cuda_graphs = settings.compile and compile_model(model, device, static and not hasattr(train, "epoch_batches"))
    sched = (schedule or warmup_schedule(settings))(opt)
    res = RunResult(select=objective.select, n_params=sum(p.numel() for p in model.parameters()))
    res.best_val = -math.inf if objective.maximize else math.inf
    classify = isinstance(objective, Classification)
    train_time, first = 0.0, 1
    if resume is not None:
        first, train_time = restore_training_state(resume, model, opt, sched, gen, res) + 1, resume["train_time"]
    for epoch in range(first, settings.epochs + 1):
        model.train()
        t0 = time.time()
        if hasattr(train, "epoch_batches"):
            batches = train.epoch_batches(settings.batch_size, gen)
        else:
            batches = shuffled_batches(train, settings.batch_size, gen)
        # float64 sums of float32 losses: the same numbers as a Python-float sum of loss.item()
        tot_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        n_seen = 0
        draws, whole_epoch = None, hasattr(augment, "epoch_draws") and not hasattr(train, "epoch_batches")
        for i, (inputs, y) in enumerate(batches):
            if whole_epoch:  # the epoch's draws after its order, as one batch at a time would draw them
                if draws is None:
                    bs, n = settings.batch_size, len(train)
                    draws = augment.epoch_draws([min(bs, n - s) for s in range(0, n, bs)], gen, device)
                inputs = augment.apply(inputs, draws[i])
            elif augment is not None:
                inputs = augment(inputs, gen)
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's outputs are summed already
            out, loss = train_step(model, inputs, y, objective, opt, settings.grad_clip)
            sched.step()
            tot_loss += loss.double() * y.shape[0]
            n_seen += y.shape[0]
            if classify:
                correct += (out.argmax(1) == y).sum()
        epoch_loss = float(tot_loss)  # the one read-back of the epoch
        train_time += time.time() - t0
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"training loss became {epoch_loss} at epoch {epoch}")
        row = {"epoch": epoch, "train_loss": epoch_loss / n_seen}
        if classify:
            row["train_acc"] = int(correct) / n_seen
        row |= {f"val_{k}": v for k, v in evaluate(model, val, objective).items()}
        row |= {"lr": sched.get_last_lr()[0], "epoch_seconds": time.time() - t0}
        score = row[f"val_{objective.select}"]
        if score > res.best_val if objective.maximize else score < res.best_val:
            res.best_val, res.best_epoch = score, epoch
            res.test, res.test_predictions = evaluate_items(model, test, objective)
            res.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if on_best is not None:
                on_best(model)
        row[f"test_{objective.select}_at_best_val"] = res.test[objective.select]
        res.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if on_checkpoint is not None:
            on_checkpoint(training_state(epoch, model, opt, sched, gen, res, train_time))
    res.seconds_per_epoch = train_time / settings.epochs
    return res


def training_state(
    epoch: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    gen: torch.Generator,
    res: RunResult,
    seconds: float,
) -> dict:
    """Everything :func:`fit_model` needs to continue after ``epoch`` as if never stopped (CPU
    copies; :func:`pipeline.io.save_state` stores it without pickle)."""
    return {
        "epoch": epoch,
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),  # dropout draws from the global generator
        "result": dataclasses.asdict(dataclasses.replace(res, best_state=None)) | {"best_state": res.best_state},
        "train_time": seconds,
    }


def restore_training_state(
    state: dict, model: nn.Module, opt: torch.optim.Optimizer, sched, gen: torch.Generator, res: RunResult
) -> int:
    """Load a :func:`training_state` into a freshly built run; returns its last finished epoch."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    for k, v in state["result"].items():
        setattr(res, k, v)
    return int(state["epoch"])
