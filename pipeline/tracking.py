"""MLflow runs and tags. Logging happens in the driver only (one writer per SQLite store).

Every call to the tracking store is retried (:func:`with_retries`): a locked SQLite file or a
restarting ``mlflow server`` costs a few seconds, not a finished result. :class:`LiveRuns` keeps
one child run per (model, seed) open while it trains, so per-epoch metrics appear in the UI as
they arrive from the Ray tasks.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config import MLflowConfig
from pipeline.io import folder_lock

T = TypeVar("T")


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


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts (the runs' model files): ``mlartifacts/`` next to
    a SQLite store's file, not the working directory; ``None`` (the server's choice) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()


_SECRET = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URI replaced by ``***``
    (``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``): what is logged
    or printed about a tracking store never holds its credentials."""
    return _SECRET.sub(r"\1:***@", text)


def setup(cfg: MLflowConfig) -> str:
    """Point MLflow at ``cfg.tracking_uri`` and create the store and the experiment once (a SQLite
    store under its lock, :func:`pipeline.io.folder_lock`); return the experiment's id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # a fresh SQLite file is created and migrated once: two processes doing it at once collide
    # (a server serialises its own schema changes)
    sqlite = cfg.tracking_uri.startswith("sqlite:///")
    db = Path(cfg.tracking_uri[len("sqlite:///") :]).resolve() if sqlite else None
    with folder_lock(db, wait=True) if db is not None else nullcontext():
        mlflow.set_tracking_uri(cfg.tracking_uri)
        if mlflow.get_experiment_by_name(cfg.experiment) is None:
            try:
                mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg.tracking_uri))
            except MlflowException:  # another stage process created it first
                pass
        exp = mlflow.set_experiment(cfg.experiment)
    return exp.experiment_id


@contextmanager
def stage_run(cfg: MLflowConfig, stage: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> Iterator[Any]:
    """A parent run for one stage invocation, tagged with the git commit (every call retried).

    The run ends FINISHED, or FAILED when the body raises.
    """
    import mlflow

    with_retries(lambda: setup(cfg), cfg.retries, "opening the experiment")
    run = with_retries(lambda: mlflow.start_run(run_name=stage), cfg.retries, f"starting the {stage} run")

    def describe() -> None:
        mlflow.set_tags({"stage": stage, "git_commit": git_commit(), **tags})
        log_params(params)

    try:
        with_retries(describe, cfg.retries, f"tagging the {stage} run")
        yield run
    except BaseException:
        try:
            mlflow.end_run("FAILED")
        except Exception:  # the original error matters more than the tracking one
            pass
        raise
    with_retries(lambda: mlflow.end_run(), cfg.retries, f"ending the {stage} run")


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow param or metric key, which may not hold ``@``: a settings variant
    ``ng_gnn@probes`` is logged as ``ng_gnn:probes`` (``train.ng_gnn:probes.hidden``)."""
    return name.replace("@", ":")


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params({mlflow_key(k): redact(str(v))[:500] for k, v in params.items()})


class TrackingError(RuntimeError):
    """MLflow kept failing after every retry (results were kept on disk)."""


def with_retries(fn: Callable[[], T], attempts: int, what: str, delay: float = 1.0) -> T:
    """``fn()``, retried ``attempts`` times with doubling delays; :class:`TrackingError` names ``what``."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # the store's own errors (locked database, connection refused, HTTP 5xx)
            if attempt == attempts:
                raise TrackingError(redact(f"MLflow: {what} failed {attempts} times: {type(e).__name__}: {e}")) from e
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def log_metrics(cfg: MLflowConfig, metrics: Mapping[str, float]) -> None:
    """``mlflow.log_metrics`` on the active run, retried (:func:`with_retries`)."""
    import mlflow

    with_retries(lambda: mlflow.log_metrics(dict(metrics)), cfg.retries, "logging the stage's metrics")


def log_artifact(cfg: MLflowConfig, path: str | Path) -> None:
    """``mlflow.log_artifact`` on the active run, retried (:func:`with_retries`)."""
    import mlflow

    with_retries(lambda: mlflow.log_artifact(str(path)), cfg.retries, f"logging the artifact {path}")


def _metrics(row: Mapping[str, float], step: int | None, skip: tuple[str, ...] = ()) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step or 0) for k, v in row.items() if k not in skip]


RUN_UID_TAG = "metazoo.run_uid"


class LiveRuns:
    """Child runs of the active parent run, fed from the driver while their Ray tasks train.

    ``start`` opens a run (status RUNNING) the moment its task starts, ``epoch`` logs one row of
    per-epoch metrics at ``step = epoch``, ``finish`` logs final metrics and closes it (FINISHED or
    FAILED). A call that fails after ``attempts`` tries is recorded in :attr:`errors` and that run
    gets no further calls; nothing raises, so a tracking outage never loses a result.
    """

    def __init__(self, cfg: MLflowConfig, parent_run_id: str, experiment_id: str, git: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(cfg.tracking_uri)
        self.parent, self.experiment, self.attempts = parent_run_id, experiment_id, cfg.retries
        self.git = git or git_commit()
        self.run_ids: dict[str, str] = {}
        # steps logged per run and metric: epoch rows come through an actor queue, which may
        # deliver them out of order, and a reopened run already holds some
        self.logged: dict[str, dict[str, set[int]]] = {}
        self.errors: dict[str, str] = {}

    def _call(self, key: str, what: str, fn: Callable[[], T]) -> T | None:
        if key in self.errors:
            return None
        try:
            return with_retries(fn, self.attempts, f"{what} of {key}")
        except TrackingError as e:
            self.errors[key] = str(e)
            return None

    def start(self, key: str, params: Mapping[str, Any], tags: Mapping[str, str], uid: str) -> None:
        """Open the child run ``key`` (idempotent: a retried task keeps its run).

        ``uid`` identifies the computation (the run's fingerprint) and is kept as the tag
        :data:`RUN_UID_TAG`: one MLflow run per computation. A run with that tag, left open by an
        earlier invocation, or closed by a call whose reply was lost, is reopened instead of
        made anew, and the epochs it logged are not logged again.
        """
        if key in self.run_ids:
            return

        def open_run() -> tuple[str, bool]:
            # searched on every attempt: a create that reached the store but lost its reply must not make a twin
            query = f"tags.`{RUN_UID_TAG}` = '{uid}'"
            found = self.client.search_runs([self.experiment], query, max_results=1, order_by=["start_time DESC"])
            if found:
                return found[0].info.run_id, True
            all_tags = {"mlflow.parentRunId": self.parent, "git_commit": self.git, RUN_UID_TAG: uid, **tags}
            return self.client.create_run(self.experiment, run_name=key, tags=all_tags).info.run_id, False

        opened = self._call(key, "opening the run", open_run)
        if opened is None:
            return
        run_id, reopened = opened
        self.run_ids[key] = run_id
        self.logged[key] = {}
        if reopened:
            self._call(key, "reading what the reopened run logged", lambda: self._reattach(key, run_id))
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:500]) for k, v in params.items()]  # same values again on a reopened run: a no-op
        self._call(key, "logging the params", lambda: self.client.log_batch(run_id, params=batch))

    def _reattach(self, key: str, run_id: str) -> None:
        """Note the steps logged of each metric of the reopened run ``run_id``: a store that
        died mid-batch may have kept some metrics of an epoch and not others."""
        keys = self.client.get_run(run_id).data.metrics
        self.logged[key] = {k: {m.step for m in self.client.get_metric_history(run_id, k)} for k in keys}

    def epoch(self, key: str, row: Mapping[str, float]) -> None:
        """Log one per-epoch row (``row["epoch"]`` is the step), in any order; the metrics
        already logged at that step are skipped."""
        step = int(row["epoch"])
        if key not in self.run_ids:
            return
        run_id, done = self.run_ids[key], self.logged[key]
        skip = ("epoch", *(k for k in row if step in done.get(k, ())))
        if all(k in skip for k in row):
            return
        self._call(key, f"epoch {step}", lambda: self.client.log_batch(run_id, metrics=_metrics(row, step, skip)))
        if key not in self.errors:
            for k in row:
                done.setdefault(k, set()).add(step)

    def finish(
        self,
        key: str,
        final: Mapping[str, float],
        tags: Mapping[str, str],
        history: list[Mapping[str, float]] = (),
        model: Path | None = None,
    ) -> str | None:
        """Log the rows of ``history`` not yet logged, ``final``, ``tags`` and the file ``model``
        (the trained weights, as the run's artifact ``model/``); close the run. Returns its id."""
        for row in history:
            self.epoch(key, row)
        if key not in self.run_ids:
            return None
        run_id = self.run_ids[key]
        from mlflow.entities import RunTag

        def close() -> None:
            self.client.log_batch(
                run_id, metrics=_metrics(final, None), tags=[RunTag(k, str(v)) for k, v in tags.items()]
            )
            if model is not None:
                self.client.log_artifact(run_id, str(model), "model")
            self.client.set_terminated(run_id, "FINISHED")

        self._call(key, "final metrics", close)
        return None if key in self.errors else run_id

    def fail(self, key: str, error: str) -> None:
        """Close the run ``key`` as FAILED with the error as a tag."""
        if key not in self.run_ids:
            return
        run_id = self.run_ids[key]

        def close() -> None:
            self.client.set_tag(run_id, "error", error[:5000])
            self.client.set_terminated(run_id, "FAILED")

        self._call(key, "marking it failed", close)
