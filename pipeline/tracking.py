"""MLflow runs and tags. Logging happens in the driver only (one writer per SQLite store)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pipeline.config import MLflowConfig


def git_commit() -> str:
    """The current commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def setup(cfg: MLflowConfig) -> str:
    """Point MLflow at ``cfg.tracking_uri`` and create the experiment once; return its id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    exp = mlflow.set_experiment(cfg.experiment)
    return exp.experiment_id


@contextmanager
def stage_run(cfg: MLflowConfig, stage: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> Iterator[Any]:
    """A parent run for one stage invocation, tagged with the git commit."""
    import mlflow

    setup(cfg)
    with mlflow.start_run(run_name=stage) as run:
        mlflow.set_tags({"stage": stage, "git_commit": git_commit(), **tags})
        log_params(params)
        yield run


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: (str(v)[:500]) for k, v in params.items()})


def log_child_run(
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    history: list[Mapping[str, float]],
    final: Mapping[str, float],
    artifacts: list[str] = (),
) -> str:
    """A nested run (inside the active parent) with per-epoch metrics and final metrics."""
    import mlflow

    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.set_tags({"git_commit": git_commit(), **tags})
        log_params(params)
        for row in history:
            step = int(row["epoch"])
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=step)
        mlflow.log_metrics({k: float(v) for k, v in final.items()})
        for path in artifacts:
            mlflow.log_artifact(path)
        return run.info.run_id
