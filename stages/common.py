"""Argument parsing shared by the stage entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import ConfigError, Params, load_params


def parse(description: str, paths: dict[str, str], argv: list[str] | None = None) -> tuple[Params, argparse.Namespace]:
    """``--params`` plus one ``--<name>`` option per path; exits with the bad key on a config error."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, default in paths.items():
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args(argv)
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
    make_item: Callable[[int], tuple],
    task,
    threads: int,
    desc: str = "zoo shards",
) -> int:
    """Run ``task(*make_item(k))`` as a Ray task for every shard ``k`` not yet complete.

    A shard is complete when its file carries ``fingerprints[k]`` (resume after a kill);
    shard files beyond the plan are removed. Returns the number of shards fitted.
    """
    from pipeline import distributed
    from pipeline.zoo.store import shard_is_complete, shard_name

    todo = [k for k in range(len(fingerprints)) if not shard_is_complete(shard_dir / shard_name(k), fingerprints[k])]
    print(f"{shard_dir}: {len(fingerprints)} shards, {len(fingerprints) - len(todo)} complete, fitting {len(todo)}")
    for stale in shard_dir.glob("shard_*.safetensors"):
        if int(stale.stem.split("_")[1]) >= len(fingerprints):
            stale.unlink()
    if todo:
        resources = distributed.init_ray(params.ray)
        distributed.check_resources(resources, threads, params.ray.gpus_per_task)
        distributed.map_tasks(
            task,
            [make_item(k) for k in todo],
            num_cpus=threads,
            num_gpus=params.ray.gpus_per_task,
            max_retries=params.ray.max_retries,
            desc=desc,
        )
    return len(todo)
