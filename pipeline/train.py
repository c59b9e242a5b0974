"""One training loop for any (metanetwork, classification task).

Model selection is on validation accuracy; the test split is evaluated only at epochs where
validation accuracy improves, and the reported test accuracy is the one at the best
validation epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pipeline.graphs.neural_graph import GraphTemplate
from pipeline.graphs.store import GraphSet
from pipeline.models import DataShape
from pipeline.models.probes import ForwardSpec
from pipeline.weightspace.spec import ParamSpec, flatten


@dataclass
class FlatSet:
    """Flattened parameter vectors ``(G, P)`` and labels, batched by index."""

    flat: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.numel())

    def batch(self, idx: Tensor) -> Tensor:
        return self.flat[idx]


def model_inputs(graphs: GraphSet, template: GraphTemplate, kind: str) -> FlatSet | GraphSet:
    """The view of a split that a model with ``input_kind == kind`` consumes."""
    if kind == "graph":
        return graphs
    if kind == "flat":
        return FlatSet(flatten(graphs.to_params(template), template.spec), graphs.y)
    raise ValueError(f"unknown input kind {kind!r}")


def data_shape(
    train: GraphSet, template: GraphTemplate, n_classes: int, forward_spec: ForwardSpec | None = None
) -> DataShape:
    """Sizes a model needs, with PNA's mean log-degree computed on the training graphs."""
    deg = torch.bincount(
        train.edge_index[1] + torch.repeat_interleave(train.node_ptr[:-1], train.edge_ptr[1:] - train.edge_ptr[:-1]),
        minlength=train.x.shape[0],
    )
    return DataShape(
        n_params=template.spec.n_params,
        node_dim=train.x.shape[1],
        edge_dim=train.edge_attr.shape[1],
        n_pos=template.n_pos,
        n_out=template.spec.layer_sizes[-1],
        n_classes=n_classes,
        avg_log_degree=float(torch.log1p(deg.double()).mean()),
        forward_spec=forward_spec,
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
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float


@dataclass
class RunResult:
    """Per-epoch history and the selected (best validation) epoch's metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -1.0
    test_acc: float = float("nan")
    test_loss: float = float("nan")
    n_params: int = 0
    seconds_per_epoch: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split (dropout off)."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        logits = model(data.batch(idx))
        y = data.y[idx]
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss / len(data), correct / len(data)


def fit_classifier(
    model: nn.Module,
    train,
    val,
    test,
    settings: TrainSettings,
    seed: int,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    augment: Callable | None = None,
) -> RunResult:
    """AdamW with linear warm-up, gradient clipping, selection on validation accuracy.

    ``augment(inputs, generator)`` transforms every training batch (never val/test batches).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warm = max(settings.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    res = RunResult(n_params=sum(p.numel() for p in model.parameters()))
    train_time = 0.0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(train), generator=gen)
        tot_loss, correct = 0.0, 0
        for start in range(0, len(train), settings.batch_size):
            idx = perm[start : start + settings.batch_size]
            inputs = train.batch(idx)
            if augment is not None:
                inputs = augment(inputs, gen)
            logits = model(inputs)
            y = train.y[idx]
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            sched.step()
            tot_loss += loss.item() * idx.numel()
            correct += int((logits.argmax(1) == y).sum())
        train_time += time.time() - t0
        if not math.isfinite(tot_loss):
            raise FloatingPointError(f"training loss became {tot_loss} at epoch {epoch}")
        val_loss, val_acc = evaluate(model, val)
        row = {
            "epoch": epoch,
            "train_loss": tot_loss / len(train),
            "train_acc": correct / len(train),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": sched.get_last_lr()[0],
            "epoch_seconds": time.time() - t0,
        }
        if val_acc > res.best_val_acc:
            res.best_val_acc, res.best_epoch = val_acc, epoch
            res.test_loss, res.test_acc = evaluate(model, test)
        row["test_acc_at_best_val"] = res.test_acc
        res.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    res.seconds_per_epoch = train_time / settings.epochs
    return res
