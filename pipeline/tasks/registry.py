"""The fitting tasks, by stage name, and the modules each one runs.

Every fitting task runs through one entry point, ``python -m stages.fit <stage>``
(``stages/fit.py``), which imports the task's module by name (:func:`task`). A task's runs and
its DVC stage therefore depend on exactly :func:`stage_modules`: the entry point and its task's
module, each with everything it imports (:func:`pipeline.provenance.source_files`), and not on
the other tasks. This module imports nothing of the project, so adding a task adds one line to
:data:`TASK_MODULES` and one :class:`~pipeline.runs.Task` to its module's ``TASKS``.
"""

from __future__ import annotations

import importlib
from typing import Any

ENTRY = "stages.fit"
TASK_MODULES = {
    "train": "pipeline.tasks.prediction",  # INR classification (SIREN zoo)
    "cnn_train": "pipeline.tasks.prediction",  # CNN generalization (@homogeneous, @heterogeneous)
    "kan_train": "pipeline.tasks.prediction",  # WS-KAN tasks (@inr, @classifier)
    "edit": "pipeline.tasks.editing",  # INR editing (dilation)
    "adapt": "pipeline.tasks.adaptation",  # domain adaptation of classifiers
}


def stage_modules(stage: str) -> tuple[str, ...]:
    """The modules stage ``stage`` (``"cnn_train@homogeneous"``) runs: ``stages.fit`` and its
    task's module for a fitting task, else ``stages.<stage>``."""
    name = stage.split("@")[0]
    if name in TASK_MODULES:
        return (ENTRY, TASK_MODULES[name])
    return (f"stages.{name}",)


def entry_args(stage: str) -> list[str]:
    """What follows ``python -m`` to run stage ``stage``: ``["stages.fit", "cnn_train@homogeneous"]``
    for a fitting task, else ``["stages.<stage>"]``."""
    return [ENTRY, stage] if stage.split("@")[0] in TASK_MODULES else [f"stages.{stage}"]


def task(stage: str) -> Any:
    """The :class:`~pipeline.runs.Task` of stage ``stage`` (``"kan_train@inr"``); ``KeyError``
    naming the known tasks for another name."""
    name = stage.split("@")[0]
    if name not in TASK_MODULES:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name]).TASKS[name]
