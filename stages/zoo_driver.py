"""The driver every zoo stage runs (:mod:`pipeline.zoo.family`): fit the plan's missing shards as
Ray tasks, store them, write the manifest and ``zoo.json``, track it in MLflow."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import distributed, tracking
from pipeline.config import ConfigError, Params, to_flat_dict
from pipeline.io import remove_stale_temps, write_json
from pipeline.provenance import recipe_environment
from pipeline.zoo.family import ZooPlan, fit_shard_task
from pipeline.zoo.store import plan_shard_dir, shard_name, write_shard

log = logging.getLogger(__name__)


def fit_missing_shards(params: Params, plan: ZooPlan, shard_dir: Path, write: Callable[[int, Any], None]) -> int:
    """Fit every shard ``k`` of ``plan`` not yet complete as the Ray task
    :func:`~pipeline.zoo.family.fit_shard_task` on ``plan.shared, *plan.task_args(k)``.

    ``plan.shared`` (the images, the digits) is put into Ray's object store once and passed to
    every task by reference; a task returns its shard's tensors and the driver stores them with
    ``write(k, result)``, so no task needs the driver's disk. A shard is complete when its file
    carries its fingerprint (resume after a kill); shard files beyond the plan or of another plan
    are retired, never deleted (:func:`pipeline.zoo.store.plan_shard_dir`), and temporary files of
    a killed writer are removed. A shard fitted in another environment than the one the plan's
    recipe (in its fingerprint) names is refused, not written
    (:func:`pipeline.provenance.recipe_environment`). ``plan.prepare()`` runs once on every node
    before the shards (building a kernel there); a node whose environment after it differs from
    the recipe's stops the stage before any fitting, named. Returns the number of shards fitted.
    """
    fingerprints = plan.fingerprints
    todo = plan_shard_dir(shard_dir, fingerprints)
    log.info(
        "%s: %d shards, %d complete, fitting %d", shard_dir, len(fingerprints), len(fingerprints) - len(todo), len(todo)
    )
    # only the driver (holding the folder's lock) writes shards, manifest and zoo.json: a
    # temporary file there is a killed write
    for tmp in remove_stale_temps(shard_dir) + remove_stale_temps(shard_dir.parent):
        log.info("%s: removed the temporary file of a killed write", tmp)
    if todo:
        import ray

        distributed.init_ray(params.ray)
        need = distributed.TaskResources(
            plan.threads, params.ray.gpus_per_task, distributed.task_memory(distributed.tensor_bytes(plan.shared))
        )
        distributed.check_resources(need, params.ray.wait_for_nodes_s)
        expect = recipe_environment(plan.recipe)
        if plan.prepare is not None:
            unfit = {
                node: why
                for node, (_, env) in distributed.on_every_node(plan.prepare, need).items()
                if (why := distributed.refusal(env, expect)) is not None
            }
            if unfit:
                lines = "\n".join(f"  node {node[:12]}: {why}" for node, why in unfit.items())
                raise ConfigError(f"{len(unfit)} node(s) cannot fit these shards as the recipe says:\n{lines}")
        ref = ray.put(plan.shared)
        distributed.map_tasks(
            fit_shard_task,
            [(ref, *plan.task_args(k)) for k in todo],
            resources=need,
            max_retries=params.ray.max_retries,
            desc=plan.desc,
            labels=[shard_name(k) for k in todo],
            on_result=lambda i, result, env: write(todo[i], result),
            expect=expect,
        )
    return len(todo)


def run_zoo(params: Params, plan: ZooPlan, record: Callable[[ZooPlan, Path], tuple[dict, dict]], out: Path) -> dict:
    """A zoo stage (:mod:`pipeline.zoo.family`): fit ``plan``'s missing shards as Ray tasks, store
    each in ``out/shards``, then write ``manifest.csv`` and ``zoo.json`` (``record``); tracked as
    one MLflow run. Returns the zoo's summary."""
    shard_dir = out / "shards"

    def write(k: int, result: tuple[dict, dict]) -> None:
        write_shard(shard_dir / shard_name(k), result[0], plan.specs[k], result[1], plan.fingerprints[k])

    with tracking.stage_run(params.mlflow, plan.stage, to_flat_dict(params), plan.tags):
        t0 = time.time()
        n_fitted = fit_missing_shards(params, plan, shard_dir, write)
        fit_seconds = time.time() - t0
        summary, info = record(plan, out)
        write_json(out / "zoo.json", info)
        # timings go to MLflow only: the zoo's files must not change when nothing was refitted
        timing = {"fit_seconds": fit_seconds, "shards_fitted": n_fitted}
        tracking.log_metrics(params.mlflow, {k: float(v) for k, v in summary.items()} | timing)
    log.info("%s: %s", plan.stage, summary)
    return summary
