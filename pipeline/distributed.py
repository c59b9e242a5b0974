"""Ray fan-out: start or join a cluster, map a function over work items with a progress bar.

Only stages import this module; everything it runs is a plain function from ``pipeline``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from pipeline.config import RayConfig


def init_ray(cfg: RayConfig) -> dict[str, float]:
    """Join ``cfg.address`` / ``RAY_ADDRESS`` / the last ``ray start``, else start a local cluster.

    Returns the cluster's resources.
    """
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if cfg.address:
            kwargs["address"] = cfg.address
        elif not os.environ.get("RAY_ADDRESS"):
            # a fresh local cluster: no dashboard (faster start); all cores unless capped
            kwargs["include_dashboard"] = False
            if cfg.num_cpus > 0:
                kwargs["num_cpus"] = cfg.num_cpus
        ray.init(**kwargs)
    return dict(ray.cluster_resources())


def check_resources(resources: dict[str, float], cpus_per_task: float, gpus_per_task: float) -> None:
    """Fail early instead of leaving tasks pending forever on a cluster that lacks a resource."""
    if gpus_per_task > 0 and resources.get("GPU", 0.0) < gpus_per_task:
        raise RuntimeError(
            f"ray.gpus_per_task={gpus_per_task} but the cluster has {resources.get('GPU', 0.0)} GPUs; "
            "set ray.gpus_per_task: 0 for CPU-only runs"
        )
    if resources.get("CPU", 0.0) < cpus_per_task:
        raise RuntimeError(f"tasks need {cpus_per_task} CPUs, the cluster has {resources.get('CPU', 0.0)}")


def map_tasks(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 2,
    desc: str = "tasks",
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """Run ``fn(*item)`` for every item as a Ray task; results in item order.

    System failures (a dead worker) are retried ``max_retries`` times; exceptions raised by
    ``fn`` are not (they are bugs or bad input) and propagate with their message. Tasks must be
    idempotent (write to a temporary name, then rename). ``on_result(i, result)`` is called
    in the driver as each task finishes (e.g. to log to MLflow from one process).
    """
    import ray

    if not items:
        return []
    remote = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
    refs = [remote.remote(*item) for item in items]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", dynamic_ncols=True) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = index[ref]
                results[i] = ray.get(ref)
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
    return results
