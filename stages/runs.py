"""Resumable (model, seed) runs as Ray tasks, with live MLflow tracking; shared by the stages
``train``, ``edit``, ``kan_train`` and ``kan_forward``.

* **Inputs through the object store.** The driver loads the stage's data once, puts it into Ray's
  object store and hands every task a reference; a task returns its result dict and never reads
  or writes the driver's disk. Only the driver writes ``<out>/`` and talks to MLflow.
* **Resume.** Every finished run is written at once to ``<out>/<model>_seed<seed>.json`` with a
  fingerprint of its settings, the data version, the device and the code (every source file of
  ``pipeline/`` and ``stages/``). A re-run keeps each run whose file carries the fingerprint it
  would produce and runs only the others; a run that raises no longer takes the others down: the
  stage finishes them, then fails naming it.
* **Live tracking.** A task sends ``start`` (node, device) and one row per epoch through
  a Ray queue; the driver opens the run's MLflow child run when it starts and logs each epoch as
  it arrives (:class:`pipeline.tracking.LiveRuns`), so a long run is watched in the UI.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.device import describe, resolve_device
from pipeline.io import CorruptFileError, fingerprint, read_json, write_json

RESULTS = "results.json"


@dataclass(frozen=True)
class Job:
    """One (model, seed) run of a stage; ``config`` is the model's ``Settings``."""

    model: str
    seed: int
    config: Any

    @property
    def key(self) -> str:
        return f"{self.model}-seed{self.seed}"

    @property
    def file(self) -> str:
        return f"{self.model}_seed{self.seed}.json"


@dataclass(frozen=True)
class TaskContext:
    """What a task needs besides its data: threads, device, and the queue to the driver."""

    key: str
    threads: int
    device: str
    events: Any = None  # a ray.util.queue.Queue, or None outside Ray

    def start(self) -> tuple[torch.device, dict[str, str]]:
        """Fix the thread count (CPU bytes must not depend on the worker), resolve the device and
        tell the driver where the run runs. Returns the device and ``{"node_id", "device"}``."""
        torch.set_num_threads(self.threads)
        device = resolve_device(self.device)
        where = {"node_id": _node_id(), "device": describe(device)}
        self._send("start", where)
        return device, where

    def epoch(self, row: dict[str, float]) -> None:
        """Forward one per-epoch row to the driver (logged to MLflow while the run goes on)."""
        self._send("epoch", dict(row))

    def _send(self, kind: str, payload: dict) -> None:
        # fire and forget: a task that waits on a Ray call (``Queue.put``) lends its CPU to the
        # next pending task while it waits, and two runs then share one core for good
        if self.events is not None:
            self.events.actor.put_nowait.remote((self.key, kind, payload))


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # not inside a Ray worker
        return "local"


@cache
def code_version() -> str:
    """Hash of every source file of ``pipeline/`` and ``stages/`` (what a run's code can be)."""
    import pipeline
    import stages

    h = hashlib.sha256()
    for pkg in (pipeline, stages):
        root = Path(pkg.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp") and p.is_file()):
            h.update(f"{pkg.__name__}/{path.relative_to(root).as_posix()}\n".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_fingerprint(stage: str, job: Job, settings: dict, data_version: str, device: str) -> str:
    """What a finished run stands for: any change re-runs it on the next invocation."""
    return fingerprint(
        {
            "stage": stage,
            "model": job.model,
            "seed": job.seed,
            "config": dataclasses.asdict(job.config),
            "settings": settings,
            "data": data_version,
            "device": device,
            "code": code_version(),
        }
    )


def kept_result(path: Path, fp: str) -> dict | None:
    """The result stored at ``path`` if it was made for fingerprint ``fp``, else ``None``."""
    if not path.exists():
        return None
    try:
        r = read_json(path)
    except CorruptFileError:
        return None
    return r if isinstance(r, dict) and r.get("fingerprint") == fp else None


def clean_out_dir(out: Path, jobs: Sequence[Job]) -> None:
    """Remove run files of jobs no longer planned and temporary files of a killed writer."""
    planned = {j.file for j in jobs}
    for f in out.glob("*_seed*.json"):
        if f.name not in planned:
            f.unlink()
    for tmp in out.glob(".*.tmp"):
        tmp.unlink()


@dataclass
class StageRuns:
    """The (model, seed) runs of one stage invocation: plan, resume, run, track, write.

    ``settings`` (JSON-able) enters every run's fingerprint and MLflow params;
    ``final_metrics(r)`` are the numbers logged when run ``r`` ends.
    """

    params: Params
    stage: str
    out: Path
    jobs: list[Job]
    data_version: str
    settings: dict
    final_metrics: Callable[[dict], dict[str, float]]

    def __post_init__(self) -> None:
        from pipeline.distributed import task_device

        self.device = task_device(self.params.ray)
        self.fps = [run_fingerprint(self.stage, j, self.settings, self.data_version, self.device) for j in self.jobs]

    def run(self, data: Any, worker: Callable[..., dict], worker_args: tuple, threads: int) -> list[dict]:
        """Run every job not finished yet as the Ray task ``worker(data, model, config, seed, ctx, *worker_args)``.

        Writes ``<out>/<model>_seed<seed>.json`` per run and ``<out>/results.json`` (every run, in
        job order) once all succeeded; returns the runs. Raises
        :class:`pipeline.distributed.TasksFailed` naming failed runs and
        :class:`pipeline.tracking.TrackingError` when MLflow kept failing, in both cases after
        every other run finished and was written.
        """
        import mlflow

        from pipeline import tracking

        self.out.mkdir(parents=True, exist_ok=True)
        clean_out_dir(self.out, self.jobs)
        self.results = [kept_result(self.out / j.file, fp) for j, fp in zip(self.jobs, self.fps, strict=True)]
        todo = [i for i, r in enumerate(self.results) if r is None]
        n_kept = len(self.jobs) - len(todo)
        print(f"{self.stage}: {len(self.jobs)} runs, {n_kept} kept from an earlier invocation, running {len(todo)}")
        p = self.params
        self.live = None
        failures = None
        try:
            with tracking.stage_run(p.mlflow, self.stage, to_flat_dict(p), {"data_version": self.data_version}) as run:
                self.live = tracking.LiveRuns(p.mlflow, run.info.run_id, run.info.experiment_id)
                for i, r in enumerate(self.results):  # kept runs that MLflow missed last time, from their history
                    if r is not None and not r.get("mlflow_run_id"):
                        self._finished(i, r)
                failures = self._run_tasks(todo, data, worker, worker_args, threads) if todo else None
                counts = {"runs_kept": n_kept, "runs_run": len(todo)}
                tracking.with_retries(lambda: mlflow.log_metrics(counts), p.mlflow.retries, "logging the run counts")
                parent_id = run.info.run_id
                if failures is not None:
                    raise failures  # inside: the stage's MLflow run ends FAILED
        except tracking.TrackingError as e:
            if self.live is None:  # the store was unreachable from the start: nothing was run
                raise
            self.live.errors[f"{self.stage} run"] = str(e)
            parent_id = self.live.parent
            if failures is not None:
                raise failures from e
        done = [r for r in self.results if r is not None]
        write_json(self.out / RESULTS, {"parent_run_id": parent_id, "data_version": self.data_version, "runs": done})
        if self.live.errors:
            raise tracking.TrackingError(
                f"{self.stage}: every run finished and is kept in {self.out}, but MLflow logging failed "
                f"({len(self.live.errors)}); run the stage again to log what is missing:\n  "
                + "\n  ".join(self.live.errors.values())
            )
        return done

    def _mlflow_params(self, job: Job) -> dict:
        model = {f"model.{k}": v for k, v in dataclasses.asdict(job.config).items()}
        return {"model": job.model, "seed": job.seed} | model | self.settings

    def _tags(self, job: Job, where: dict) -> dict:
        placed = {k: str(where[k]) for k in ("node_id", "device") if k in where}
        return {"model": job.model, "data_version": self.data_version, "parent_stage": self.stage} | placed

    def _started(self, i: int, where: dict, existing: str | None = None) -> None:
        job = self.jobs[i]
        self.live.start(job.key, self._mlflow_params(job), self._tags(job, where), existing)

    def _finished(self, i: int, r: dict) -> None:
        """Keep result ``r`` of job ``i`` on disk, then close its MLflow run and record the run id
        (or, when MLflow failed, the id of the run left open, to reopen it next time)."""
        job = self.jobs[i]
        self.results[i] = r
        write_json(self.out / job.file, r)  # on disk before MLflow is asked anything
        self._started(i, r, r.get("mlflow_pending_run_id"))  # a no-op when the task's start event opened it
        run_id = self.live.finish(job.key, self.final_metrics(r), self._tags(job, r), r["history"])
        kept = {k: v for k, v in r.items() if k != "mlflow_pending_run_id"}
        if run_id is not None:
            self.results[i] = kept | {"mlflow_run_id": run_id}
        elif self.live.pending(job.key):
            self.results[i] = kept | {"mlflow_pending_run_id": self.live.pending(job.key)}
        if self.results[i] is not r:
            write_json(self.out / job.file, self.results[i])

    def _run_tasks(self, todo: list[int], data: Any, worker, worker_args: tuple, threads: int):
        """Submit runs ``todo``; forward their events to MLflow; keep each result as it arrives.

        Returns the :class:`~pipeline.distributed.TasksFailed` of runs that raised, or ``None``.
        """
        import ray
        from ray.util.queue import Queue

        from pipeline import distributed

        distributed.init_ray(self.params.ray)
        memory = distributed.task_memory(distributed.tensor_bytes(data))
        need = distributed.TaskResources(threads, self.params.ray.gpus_per_task, memory)
        distributed.check_resources(need)
        events = Queue(actor_options={"num_cpus": 0})
        index = {self.jobs[i].key: i for i in todo}
        ref = ray.put(data)
        items = []
        for i in todo:
            j = self.jobs[i]
            ctx = TaskContext(j.key, threads, self.device, events)
            items.append((ref, j.model, j.config, j.seed, ctx, *worker_args))

        def poll() -> None:
            n = events.qsize()
            for key, kind, payload in events.get_nowait_batch(n) if n else []:
                if kind == "start":
                    self._started(index[key], payload)
                elif kind == "epoch":
                    self.live.epoch(key, payload)

        def on_result(k: int, r: dict) -> None:
            self._finished(todo[k], r | {"fingerprint": self.fps[todo[k]], "code_version": code_version()})

        def on_error(k: int, message: str) -> None:
            self._started(todo[k], {})  # a run that failed before it started still shows, FAILED
            self.live.fail(self.jobs[todo[k]].key, message)

        try:
            distributed.map_tasks(
                worker,
                items,
                resources=need,
                max_retries=self.params.ray.max_retries,
                desc=f"{self.stage} runs",
                labels=[f"{self.jobs[i].model} seed {self.jobs[i].seed}" for i in todo],
                on_result=on_result,
                on_error=on_error,
                poll=poll,
            )
        except distributed.TasksFailed as e:
            return e
        finally:
            events.shutdown()
        return None
