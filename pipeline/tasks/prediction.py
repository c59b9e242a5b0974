"""Prediction: classify what a net encodes, or regress a number from its weights (a CNN's test
accuracy, a KAN's class): the task of the stages ``train``, ``cnn_train`` and ``kan_train``.

The graphs' ``meta.json`` says which (``kind``): classification into ``n_targets`` classes
(:class:`~pipeline.train.Classification`, selected on accuracy) or regression of the targets
``y`` standardized with the training split's statistics
(:class:`~pipeline.train.Regression`, selected on R²). A run also keeps the test targets beside
its per-item test predictions.
"""

from __future__ import annotations

from typing import Any

from pipeline.runs import GraphData, Task
from pipeline.tasks.job import Extras, Fitting, JobKind
from pipeline.train import Classification, Regression, RunResult


def objective(data: GraphData) -> Classification | Regression:
    """The objective the graphs' ``meta.json`` names."""
    if data.meta["kind"] == "classification":
        return Classification(int(data.meta["n_targets"]))
    return Regression.fit(data.splits["train"].y)


def n_out(obj: Any) -> int:
    """Classes, or regression targets."""
    return obj.n_classes if isinstance(obj, Classification) else obj.n_targets


def extras(fitting: Fitting) -> Extras:
    """The test targets (flattened per item, beside the per-item test predictions) and, for a
    classifier, ``best_val_acc``."""
    y = fitting.data.splits["test"].y
    select = fitting.objective.select

    def finish(res: RunResult) -> dict:
        out: dict = {"test_targets": y.reshape(len(y), -1).squeeze(-1).tolist()}
        if select == "acc":
            out["best_val_acc"] = res.best_val
        return out

    return Extras(finish=finish)


PREDICTION = JobKind(objective=objective, n_out=n_out, extras=extras)


def cnn_models(section: Any, family: str) -> list[str]:
    """The models of ``cnn.train`` for zoo kind ``family`` (the heterogeneous zoo has no single
    weight space: graph and statistics models only)."""
    return section.family_models(family)


# ReLU-family CNNs and KANs (SiLU is not odd) have no sign symmetry, and the heterogeneous CNN
# zoo no single weight space: no augmentation there ("_perm" models add random permutations)
TASKS = {
    "train": Task(kind=PREDICTION, section="train", paths={"graphs": "data/graphs", "out": "data/train"}),
    "cnn_train": Task(
        kind=PREDICTION,
        section="cnn.train",
        paths={"graphs": "data/cnn/{variant}/graphs", "out": "data/cnn/{variant}/train"},
        variants=("homogeneous", "heterogeneous"),
        models=cnn_models,
        augment=None,
    ),
    "kan_train": Task(
        kind=PREDICTION,
        section="kan.train",
        paths={"graphs": "data/kan/{variant}/graphs", "out": "data/kan/{variant}/train"},
        variants=("inr", "classifier"),
        augment=None,
    ),
}
