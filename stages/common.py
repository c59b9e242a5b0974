"""Argument parsing shared by the stage entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import configure_logging
from pipeline.config import ConfigError, Params, load_params


def parse(description: str, paths: dict[str, str], argv: list[str] | None = None) -> tuple[Params, argparse.Namespace]:
    """``--params`` plus one ``--<name>`` option per path; exits with the bad key on a config error."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, default in paths.items():
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args(argv)
    configure_logging()
    try:
        params = load_params(args.params)
    except ConfigError as e:
        print(f"error in {args.params}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    return params, args


def fit_missing_shards(
    params: Params,
    shard_dir: Path,
    fingerprints: list[str],
    shared: Any,
    make_item: Callable[[int], tuple],
    task: Callable[..., Any],
    write: Callable[[int, Any], None],
    threads: int,
    desc: str = "zoo shards",
    recipe: dict | None = None,
    prepare: Callable[[], Any] | None = None,
) -> int:
    """Fit every shard ``k`` not yet complete as the Ray task ``task(shared, *make_item(k))``.

    ``shared`` (the images, the digits) is put into Ray's object store once and passed to every
    task by reference; a task returns its shard's tensors and the driver stores them with
    ``write(k, result)``, so no task needs the driver's disk. A shard is complete when its file
    carries ``fingerprints[k]`` (resume after a kill); shard files beyond the plan or of another
    plan are retired, never deleted (:func:`pipeline.zoo.store.plan_shard_dir`), and temporary
    files of a killed writer are removed. A shard fitted in another environment than the one its
    ``recipe`` (in its fingerprint) names is refused, not written
    (:func:`pipeline.provenance.recipe_environment`). ``prepare()`` runs once on every node
    before the shards (building a kernel there); a node whose environment after it differs from
    the recipe's stops the stage before any fitting, named. Returns the number of shards fitted.
    """
    from pipeline import distributed
    from pipeline.provenance import recipe_environment
    from pipeline.zoo.store import plan_shard_dir, shard_name

    todo = plan_shard_dir(shard_dir, fingerprints)
    print(f"{shard_dir}: {len(fingerprints)} shards, {len(fingerprints) - len(todo)} complete, fitting {len(todo)}")
    # only the driver (holding the folder's lock) writes shards, manifest and zoo.json: a
    # temporary file there is a killed write
    from pipeline.io import remove_stale_temps

    for tmp in remove_stale_temps(shard_dir) + remove_stale_temps(shard_dir.parent):
        print(f"{tmp}: removed the temporary file of a killed write")
    if todo:
        import ray

        distributed.init_ray(params.ray)
        need = distributed.TaskResources(
            threads, params.ray.gpus_per_task, distributed.task_memory(distributed.tensor_bytes(shared))
        )
        distributed.check_resources(need, params.ray.wait_for_nodes_s)
        expect = recipe_environment(recipe) if recipe is not None else None
        if prepare is not None:
            unfit = {
                node: why
                for node, (_, env) in distributed.on_every_node(prepare, need).items()
                if (why := distributed.refusal(env, expect)) is not None
            }
            if unfit:
                lines = "\n".join(f"  node {node[:12]}: {why}" for node, why in unfit.items())
                raise ConfigError(f"{len(unfit)} node(s) cannot fit these shards as the recipe says:\n{lines}")
        ref = ray.put(shared)
        distributed.map_tasks(
            task,
            [(ref, *make_item(k)) for k in todo],
            resources=need,
            max_retries=params.ray.max_retries,
            desc=desc,
            labels=[shard_name(k) for k in todo],
            on_result=lambda i, result, env: write(todo[i], result),
            expect=expect,
        )
    return len(todo)


@contextmanager
def reported_errors(stage: str, out: Path | None = None) -> Iterator[None]:
    """Turn the errors a user acts on into one message and an exit code, without a traceback;
    hold the one-writer lock of output folder ``out`` for the block (:func:`pipeline.io.folder_lock`).

    A bad parameter or a resource the cluster lacks (:class:`ConfigError`) exits 2; a folder
    another driver writes (:class:`~pipeline.io.FolderBusy`, naming its host and pid), failed
    runs or shards (:class:`~pipeline.distributed.TasksFailed`), a tracking store that kept
    failing (:class:`~pipeline.tracking.TrackingError`) and a damaged input file
    (:class:`~pipeline.io.CorruptFileError`, which names it) exit 1: finished results are kept
    and the next invocation resumes.
    """
    from contextlib import nullcontext

    from pipeline.distributed import TasksFailed
    from pipeline.io import CorruptFileError, FolderBusy, folder_lock
    from pipeline.tracking import TrackingError

    try:
        with folder_lock(out) if out is not None else nullcontext():
            yield
    except ConfigError as e:
        print(f"{stage}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    except (FolderBusy, TasksFailed, TrackingError, CorruptFileError) as e:
        print(f"{stage}: {e}", file=sys.stderr)
        raise SystemExit(1) from e
