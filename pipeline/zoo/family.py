"""A zoo family: how its stage plans a zoo, shard by shard, and what it records afterwards.

Every zoo stage (SIREN INRs, KANs, CNN classifiers, domain-adaptation MLPs) runs the same
entry point and driver (``python -m stages.zoo <stage>``, ``stages.zoo_driver.run_zoo``): plan
from the params alone, fit every shard whose file does not carry its fingerprint yet as a task
(so a killed stage resumes, and the shards are the same whatever the number of workers), store
each shard as it arrives, then write ``manifest.csv`` and ``zoo.json``. A family module
(``pipeline.zoo.build`` for SIREN INRs, ``kan_zoo``, ``cnn_zoo``, ``adapt_zoo``), listed by stage
name in :mod:`pipeline.zoo.registry`, defines ``FAMILY``, a :class:`ZooFamily`:

- ``plan(*sections, variant=, seed=, out=, device=, environment=) -> ZooPlan`` on the
  ``params.yaml`` sections it names: the shards, their data, task arguments and fingerprints,
  and the recipe;
- ``record(plan, out) -> (summary, zoo_json)``: reads the stored shards back (checked against
  their hashes), writes ``out/manifest.csv`` and returns the summary and the ``zoo.json`` content;
- ``out``: the zoo's default folder, and ``variants``: the ``@`` items of its stage.

Nothing here needs Ray, DVC or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.device import resolve_device
from pipeline.weightspace.spec import ParamSpec

ShardResult = tuple[dict[str, Tensor], dict[str, Tensor]]  # the nets' parameters, per-net columns


@dataclass(frozen=True)
class ZooPlan:
    """Everything that fixes a zoo's bytes, from the params alone.

    Attributes:
        stage: the stage's name in logs and MLflow (``"kan_zoo@inr"``).
        task: the shard fitter, a module-level function ``task(shared, *shards[k], device)``
            returning the shard's :data:`ShardResult` on the CPU (``device`` a ``torch.device``).
        shared: what every shard's task reads (images, digits, digit banks): put in Ray's object
            store once and passed by reference.
        shards: per shard, the task's arguments between ``shared`` and the device.
        specs: per shard, the weight space of its nets.
        fingerprints: per shard, the hash of the recipe and its plan entries; a shard file that
            carries it is complete.
        recipe: what the fingerprints cover besides the plan entries (settings, code, inputs,
            device); a worker whose environment differs from it is refused.
        device: where the tasks fit (``"cpu"``, ``"cuda"``).
        threads: torch threads per task, fixed (the reduction order, hence the bytes, must not
            depend on the worker).
        tags: MLflow tags of the stage's run.
        desc: the progress bar's label.
        prepare: run once on every node before its shards (building a kernel), or ``None``.
        context: the family's own planning results that its ``record`` reads (splits,
            architectures, the nets of each shard).
    """

    stage: str
    task: Callable[..., ShardResult]
    shared: Any
    shards: list[tuple]
    specs: list[ParamSpec]
    fingerprints: list[str]
    recipe: dict
    device: str
    threads: int
    tags: dict[str, str] = field(default_factory=dict)
    desc: str = "zoo shards"
    prepare: Callable[[], Any] | None = None
    context: dict = field(default_factory=dict)

    def task_args(self, k: int) -> tuple:
        """The arguments of :func:`fit_shard_task` after ``shared`` for shard ``k``."""
        return (self.task, self.threads, self.device, *self.shards[k])


def fit_shard_task(shared: Any, task: Callable[..., ShardResult], threads: int, device: str, *args) -> ShardResult:
    """One shard, as a Ray task runs it (and as :func:`fit_here` does): ``threads`` torch threads,
    then ``task(shared, *args, device)``."""
    torch.set_num_threads(threads)
    return task(shared, *args, resolve_device(device))


def fit_here(plan: ZooPlan, k: int) -> ShardResult:
    """Shard ``k`` fitted in this process on the CPU, exactly as its task fits it there
    (reference runs: a shard's bytes do not depend on where it is fitted)."""
    return fit_shard_task(plan.shared, plan.task, plan.threads, "cpu", *plan.shards[k])


@dataclass(frozen=True)
class ZooFamily:
    """A zoo family as its stage runs it (``python -m stages.zoo <stage>[@<variant>]``).

    Attributes:
        sections: the ``params.yaml`` sections its plan reads (``("data", "zoo")``).
        plan: ``plan(*sections, variant=, seed=, out=, device=, environment=) -> ZooPlan``;
            ``environment``: :func:`~pipeline.provenance.fit_environment` of the stage's code,
            ``out`` the zoo's folder (a family may keep data its shards read there: the
            adaptation digit banks).
        record: ``record(plan, out) -> (summary, zoo_json)``.
        out: the zoo's default folder, ``{variant}`` filled in.
        variants: the stage's ``@`` items (the KAN tasks, the CNN zoo kinds); empty for none.
    """

    sections: tuple[str, ...]
    plan: Callable[..., ZooPlan]
    record: Callable[[ZooPlan, Path], tuple[dict, dict]]
    out: str
    variants: tuple[str, ...] = ()

    def default_out(self, variant: str) -> str:
        """The zoo's folder for ``variant`` (``""`` without variants)."""
        return self.out.format(variant=variant)
