"""The job of every fitting task: one (model, seed) trained on a stage's data, as one Ray task.

:func:`fit_job` is the one template. It fixes the task's threads and device, seeds, builds the
task's objective and its model (a predictor, or an editor whose output is parameters), fits it
with :func:`pipeline.train.fit_model` (per-epoch reports, checkpoints, resume) and returns the
result the runner (:class:`pipeline.runs.StageRuns`) keeps. What a task does differently is a
:class:`JobKind` of module-level functions (a Ray task receives it by reference): its
objective, its number of outputs, and what it adds around the fit (a reference score of the
unchanged nets, example renders, the test targets).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.augment import augmenter, model_augment
from pipeline.graphs.neural_graph import GraphTemplate, graph_template
from pipeline.models import build_editor, build_model, split_model_name
from pipeline.saved import model_card
from pipeline.train import RunResult, TrainSettings, data_shape, fit_model, forward_spec_from_meta, model_inputs
from pipeline.weightspace.spec import ParamSpec

if TYPE_CHECKING:  # the runner imports this module: types only
    from pipeline.runs import GraphData, TaskContext


@dataclass(frozen=True)
class Fitting:
    """One job's state before it fits, handed to :attr:`JobKind.extras`: the task's data, the
    graphs' template (``None`` for several architectures), the objective, the model's inputs per
    split and the device."""

    data: GraphData
    template: GraphTemplate | None
    objective: Any
    inputs: dict[str, Any]
    device: torch.device


@dataclass(frozen=True)
class Extras:
    """What a task adds around one fit. ``state``: JSON-able, travels with every checkpoint and
    is restored in place on resume (what ``on_best`` keeps); ``on_best(model)``: called at each
    new best validation epoch; ``finish(result)``: the result's extra keys."""

    state: dict = field(default_factory=dict)
    on_best: Callable[[nn.Module], None] | None = None
    finish: Callable[[RunResult], dict] = lambda res: {}


def no_extras(fitting: Fitting) -> Extras:
    """A task that adds nothing around the fit."""
    return Extras()


@dataclass(frozen=True, kw_only=True)
class JobKind:
    """What a task's job does differently from the template.

    ``objective(data)`` builds the objective of :func:`pipeline.train.fit_model`; ``n_out(objective)``
    is the model's number of outputs per net; ``editor``: the model maps parameters to
    parameters (:func:`pipeline.models.build_editor`, with the stage's ``init_scale``), else it
    predicts (:func:`pipeline.models.build_model`); ``extras(fitting)`` adds around the fit;
    ``label`` prefixes the job's log lines.
    """

    objective: Callable[[GraphData], Any]
    n_out: Callable[[Any], int]
    editor: bool = False
    extras: Callable[[Fitting], Extras] = no_extras
    label: str = ""


def fit_job(
    data: GraphData,
    model_name: str,
    model_cfg: Any,
    seed: int,
    ctx: TaskContext,
    settings: TrainSettings,
    augment: str,
    kind: JobKind,
    init_scale: float | None = None,
) -> dict:
    """Build and train model ``model_name`` (``"dwsnet"``, ``"mlp_perm"``, ...) with settings
    ``model_cfg`` on ``data`` for task ``kind``; return its result as a plain dict (with its
    best-validation weights and model card, which the runner writes to the model file)."""
    device, where = ctx.start()
    torch.manual_seed(seed)
    meta, splits = data.meta, data.splits
    template = graph_template(ParamSpec.from_dict(meta["spec"])) if meta.get("spec") else None
    objective = kind.objective(data)
    fwd = forward_spec_from_meta(meta) if "forward" in meta else None
    shape = data_shape(splits["train"], template, kind.n_out(objective), fwd)
    base, permutations = split_model_name(model_name)
    if kind.editor:
        model = build_editor(base, model_cfg, shape, init_scale)
    else:
        model = build_model(base, model_cfg, shape)
    inputs = {s: model_inputs(g, template, model.input_kind) for s, g in splits.items()}
    extras = kind.extras(Fitting(data, template, objective, inputs, device))
    spec = template.spec if template is not None else None
    t0 = time.time()
    res = fit_model(
        model,
        inputs["train"],
        inputs["val"],
        inputs["test"],
        settings,
        seed,
        objective,
        on_epoch=ctx.reporter(f"{kind.label}{model_name} seed {seed}", objective.select, settings.epochs),
        augment=augmenter(model_augment(augment, model_cfg), model.input_kind, spec, permutations, fwd),
        on_best=extras.on_best,
        device=device,
        **ctx.resumable(extras.state),
    )
    out = result_dict(res, model_name, seed, model_cfg, time.time() - t0)
    out["card"] = model_card(model_name, model_cfg, shape, meta, objective, init_scale if kind.editor else None)
    out.update(best_val_metric=res.best_val, **{f"test_{k}": v for k, v in res.test.items()})
    out.update(extras.finish(res), **where)
    return out


def result_dict(res: RunResult, model_name: str, seed: int, model_cfg: Any, seconds: float) -> dict:
    """A run's result as plain data, with its best-validation weights (CPU tensors) under
    ``"weights"``: :class:`~pipeline.runs.StageRuns` writes those to the run's model file."""
    weights = res.best_state
    out = dataclasses.asdict(dataclasses.replace(res, best_state=None))
    del out["best_state"]
    out.update(model=model_name, seed=seed, wall_seconds=seconds, config=dataclasses.asdict(model_cfg))
    out["weights"] = weights
    return out
