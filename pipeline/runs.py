"""Resumable (model, seed) runs as Ray tasks, with live MLflow tracking: the runner of every
fitting task (:class:`Task`, run by ``python -m stages.fit``: the job is
:func:`pipeline.tasks.job.fit_job`), of ``kan_forward`` and ``l2o``, and of ``experiments/``.

* **Inputs through the object store.** The driver loads the stage's data once, puts it into Ray's
  object store and hands every task a reference; a task returns its result dict and never reads
  or writes the driver's disk. Only the driver writes ``<out>/`` and talks to MLflow.
* **Resume.** Every finished run is written at once to ``<out>/<model>_seed<seed>.json`` with a
  fingerprint of its settings, the data version, the device and the code (every project file the
  stage runs, :func:`pipeline.provenance.code_hash`). A re-run keeps each run whose file carries the fingerprint it
  would produce and runs only the others; a run that raises no longer takes the others down: the
  stage finishes them, then fails naming it.
* **Trained models kept.** A run's best-validation weights come back with its result; the
  driver writes them to ``<out>/<model>_seed<seed>.safetensors`` with the model card that rebuilds
  the model (:mod:`pipeline.saved`) and logs that file as the MLflow run's ``model``.
* **Live tracking.** A task sends ``start`` (node, device) and one row per epoch through
  a Ray queue; the driver opens the run's MLflow child run when it starts and logs each epoch as
  it arrives (:class:`pipeline.tracking.LiveRuns`), so a long run is watched in the UI.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import configure_logging
from pipeline.augment import check_augmentation
from pipeline.config import ConfigError, Params, to_flat_dict
from pipeline.device import describe, resolve_device
from pipeline.graphs.store import GraphSet, data_version, read_graph_dir
from pipeline.io import (
    RETIRED,
    CorruptFileError,
    fingerprint,
    load_state,
    read_json,
    remove_stale_temps,
    retire,
    save_state,
    unretire,
    write_json,
)
from pipeline.models import settings_key
from pipeline.provenance import code_hash
from pipeline.saved import save_model
from pipeline.tasks.job import JobKind, fit_job
from pipeline.tasks.registry import stage_modules
from pipeline.train import (
    TrainSettings,
    forward_spec_from_meta,
)
from pipeline.weightspace.spec import ParamSpec

log = logging.getLogger(__name__)
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"  # <out>/checkpoints/<run fingerprint>.safetensors: unfinished runs' last epoch


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

    @property
    def model_file(self) -> str:
        """The run's best-validation weights and model card (:mod:`pipeline.saved`)."""
        return f"{self.model}_seed{self.seed}.safetensors"


@dataclass(frozen=True)
class TaskContext:
    """What a task needs besides its data: threads, device, and the queue to the driver."""

    key: str
    threads: int
    device: str
    events: Any = None  # a ray.util.queue.Queue, or None outside Ray
    resume: dict | None = None  # the run's last checkpoint (:func:`pipeline.train.training_state`)

    def start(self) -> tuple[torch.device, dict[str, str]]:
        """Fix the thread count (CPU bytes must not depend on the worker), resolve the device and
        tell the driver where the run runs. Returns the device and ``{"node_id", "device"}``."""
        torch.set_num_threads(self.threads)
        configure_logging(node=_node_id())  # a Ray worker: its records reach the driver through stderr
        device = resolve_device(self.device)
        where = {"node_id": _node_id(), "device": describe(device)}
        self._send("start", where)
        return device, where

    def epoch(self, row: dict[str, float]) -> None:
        """Forward one per-epoch row to the driver (logged to MLflow while the run goes on)."""
        self._send("epoch", dict(row))

    def reporter(self, label: str, metric: str, total: int, unit: str = "epoch") -> Callable[[dict], None]:
        """An ``on_epoch`` callback: one log record per epoch, in the driver's output (Ray forwards a
        worker's stderr), ``label: epoch 3/8 train loss 1.234 val acc 0.456 (12 s)``, and the row
        sent to the driver (:meth:`epoch`). ``unit="step"`` counts a row's ``step`` instead."""

        def report(row: dict) -> None:
            log.info(
                "%s: %s %d/%d train loss %.4f val %s %.4f (%.0f s)", label, unit, int(row[unit]), total,
                row["train_loss"], metric, row[f"val_{metric}"], row["epoch_seconds"],
            )  # fmt: skip
            self.epoch(row)

        return report

    def checkpoint(self, state: dict) -> None:
        """Send the training state after an epoch to the driver, which keeps it on disk."""
        self._send("checkpoint", state)

    def resumable(self, state: dict) -> dict:
        """``fit_model`` keyword arguments that resume this run from :attr:`resume` and checkpoint
        it after every epoch. ``state`` is the caller's own JSON-able dict (what its ``on_best``
        keeps): it travels with each checkpoint and is restored in place on resume."""
        if self.resume is not None:
            state.update(self.resume.get("caller", {}))
            log.info("%s: resumed after epoch %d", self.key, self.resume["epoch"])
        return {"resume": self.resume, "on_checkpoint": lambda s: self.checkpoint(s | {"caller": state})}

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


def code_version(stage: str) -> str:
    """Hash of every project file stage ``stage`` runs (``"cnn_train@homogeneous"``: ``stages/fit.py``
    and ``pipeline/tasks/prediction.py`` with all they import; ``"l2o"``: ``stages/l2o.py``),
    :func:`pipeline.tasks.registry.stage_modules`."""
    return "+".join(code_hash(m) for m in stage_modules(stage))


def run_fingerprint(stage: str, job: Job, settings: dict, data_version: str, device: str) -> str:
    """What a finished run stands for: its job, settings, content-addressed data version, device,
    code and library versions. Any change re-runs it on the next invocation."""
    return fingerprint(
        {
            "stage": stage,
            "model": job.model,
            "seed": job.seed,
            "config": dataclasses.asdict(job.config),
            "settings": settings,
            "data": data_version,
            "device": device,
            "code": code_version(stage),
            "libraries": library_versions(),
        }
    )


def library_versions() -> dict[str, str]:
    """The versions of the libraries whose kernels compute a run: a new release reruns it."""
    import torch_geometric

    return {"torch": torch.__version__, "torch_geometric": torch_geometric.__version__}


def kept_result(out: Path, job: Job, fp: str) -> dict | None:
    """The result of ``job`` stored in ``out`` if it was made for fingerprint ``fp`` (and its model
    file, where it has one, is there), else ``None``."""
    path = out / job.file
    if not path.exists():
        return None
    try:
        r = read_json(path)
    except CorruptFileError:
        return None
    if not isinstance(r, dict) or r.get("fingerprint") != fp:
        return None
    return None if r.get("model_file") and not (out / r["model_file"]).exists() else r


def _retire_run(out: Path, file: str, model_file: str) -> None:
    """Move a finished run's result (and model file) to ``out/retired/<its fingerprint>/``."""
    try:
        r = read_json(out / file)
        fp = r.get("fingerprint") if isinstance(r, dict) else None
    except CorruptFileError:
        fp = None
    retire([out / file, out / model_file], out, str(fp) if fp else "unreadable")


def prepare_out_dir(out: Path, jobs: Sequence[Job], fps: Sequence[str]) -> list[dict | None]:
    """The kept result of every job (``None``: to run), with nothing finished deleted.

    A run that is not in the plan, or that was made for another fingerprint than its job's, is
    moved to ``out/retired/<its fingerprint>/``; a planned job whose fingerprint is retired
    there comes back without recomputation. Temporary files of a killed writer are removed
    (the caller holds the folder's lock).
    """
    planned = {j.file for j in jobs}
    for f in sorted(out.glob("*_seed*.json")):
        if f.name not in planned:
            _retire_run(out, f.name, f.with_suffix(".safetensors").name)
    results = []
    for job, fp in zip(jobs, fps, strict=True):
        r = kept_result(out, job, fp)
        if r is None:
            if (out / job.file).exists():
                _retire_run(out, job.file, job.model_file)
            if unretire(out, fp, [job.file]):
                unretire(out, fp, [job.model_file])
                r = kept_result(out, job, fp)
                if r is not None:
                    log.info("%s: brought back from %s, not rerun", out / job.file, out / RETIRED / fp)
        results.append(r)
    remove_stale_temps(out)
    return results


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
        self.checkpoints: dict[int, dict] = {}  # job index -> its latest training state
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
        self.results = prepare_out_dir(self.out, self.jobs, self.fps)
        todo = [i for i, r in enumerate(self.results) if r is None]
        n_kept = len(self.jobs) - len(todo)
        log.info(
            "%s: %d runs, %d kept from an earlier invocation, running %d", self.stage, len(self.jobs), n_kept, len(todo)
        )
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

    def _checkpoint_file(self, i: int) -> Path:
        return self.out / CHECKPOINTS / f"{self.fps[i]}.safetensors"

    def _saved_checkpoint(self, i: int) -> dict | None:
        """Run ``i``'s last checkpoint on disk (a damaged one is named and ignored)."""
        path = self._checkpoint_file(i)
        if not path.exists():
            return None
        try:
            return load_state(path)
        except CorruptFileError as e:
            log.warning("%s; run %s starts from epoch 1", e, self.jobs[i].key)
            return None

    def _keep_checkpoint(self, i: int, state: dict) -> None:
        if self.results[i] is None:  # a late event of a finished run is dropped
            self.checkpoints[i] = state
            save_state(self._checkpoint_file(i), state)

    def _mlflow_params(self, job: Job) -> dict:
        model = {f"model.{k}": v for k, v in dataclasses.asdict(job.config).items()}
        return {"model": job.model, "seed": job.seed} | model | self.settings

    def _tags(self, job: Job, where: dict) -> dict:
        placed = {k: str(where[k]) for k in ("node_id", "device") if k in where}
        placed |= {f"worker.{k}": v for k, v in where.get("worker", {}).items()}  # what ran it (finished runs)
        return {"model": job.model, "data_version": self.data_version, "parent_stage": self.stage} | placed

    def _started(self, i: int, where: dict) -> None:
        job = self.jobs[i]
        self.live.start(job.key, self._mlflow_params(job), self._tags(job, where), uid=self.fps[i])

    def _finished(self, i: int, r: dict) -> None:
        """Keep result ``r`` of job ``i`` on disk (its weights, if it returned them, as the model
        file), then close its MLflow run with the model file as artifact and record the run id.
        When MLflow fails the run stays open, tagged with the run's fingerprint; the next
        invocation finds it by that tag and reopens it."""
        job = self.jobs[i]
        weights, card = r.pop("weights", None), r.pop("card", None)
        if weights is not None and card is not None:
            card |= {"stage": self.stage, "seed": job.seed, "test": r["test"], "fingerprint": r["fingerprint"]}
            save_model(self.out / job.model_file, weights, card)
            r["model_file"] = job.model_file
        self.results[i] = r
        write_json(self.out / job.file, r)  # on disk before MLflow is asked anything
        self.checkpoints.pop(i, None)
        self._checkpoint_file(i).unlink(missing_ok=True)  # superseded by the result
        self._started(i, r)  # a no-op when the task's start event opened it
        model = self.out / r["model_file"] if r.get("model_file") else None
        run_id = self.live.finish(job.key, self.final_metrics(r), self._tags(job, r), r["history"], model)
        if run_id is not None:
            self.results[i] = r | {"mlflow_run_id": run_id}
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
        distributed.check_resources(need, self.params.ray.wait_for_nodes_s)
        events = Queue(actor_options={"num_cpus": 0})
        index = {self.jobs[i].key: i for i in todo}
        ref = ray.put(data)
        self.checkpoints = {i: c for i in todo if (c := self._saved_checkpoint(i)) is not None}

        def item(k: int) -> tuple:
            """Run ``todo[k]``'s task arguments, resuming from its latest checkpoint."""
            i = todo[k]
            j = self.jobs[i]
            ctx = TaskContext(j.key, threads, self.device, events, self.checkpoints.get(i))
            return (ref, j.model, j.config, j.seed, ctx, *worker_args)

        lost = False

        def poll() -> None:
            nonlocal lost
            if lost:
                return
            try:
                n = events.qsize()
                batch = events.get_nowait_batch(n) if n else []
            except Exception as e:  # the event actor died: the runs go on; each logs its history when it ends
                lost = True
                log.warning(
                    "%s: live events lost (%s); every run still finishes and MLflow gets its epochs from its "
                    "history when it ends (no new checkpoints this invocation)",
                    self.stage,
                    type(e).__name__,
                )
                return
            for key, kind, payload in batch:
                if kind == "start":
                    self._started(index[key], payload)
                elif kind == "epoch":
                    self.live.epoch(key, payload)
                elif kind == "checkpoint":
                    self._keep_checkpoint(index[key], payload)

        def on_result(k: int, r: dict, env: dict) -> None:
            self._finished(
                todo[k], r | {"fingerprint": self.fps[todo[k]], "code_version": code_version(self.stage), "worker": env}
            )

        def on_error(k: int, message: str) -> None:
            self._started(todo[k], {})  # a run that failed before it started still shows, FAILED
            self.live.fail(self.jobs[todo[k]].key, message)

        try:
            distributed.map_tasks(
                worker,
                [item(k) for k in range(len(todo))],
                resources=need,
                max_retries=self.params.ray.max_retries,
                retry_item=item,  # a lost worker's run continues from its last checkpoint
                expect={"torch": library_versions()["torch"]},  # what the runs' fingerprints say of the worker
                desc=f"{self.stage} runs",
                labels=[f"{self.jobs[i].model} seed {self.jobs[i].seed}" for i in todo],
                on_result=on_result,
                on_error=on_error,
                poll=poll,
            )
        except distributed.TasksFailed as e:
            return e
        finally:
            try:
                events.shutdown()
            except Exception:  # already dead
                pass
        return None


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GraphData:
    """A graphs directory in memory: ``meta.json`` and the three splits (what a task receives)."""

    meta: dict
    splits: dict[str, GraphSet]
    derived: dict = dataclasses.field(default_factory=dict)  # how splits were changed after loading

    @staticmethod
    def load(graphs_dir: str | Path) -> GraphData:
        """Read a graphs folder, every split checked against the SHA-256 its ``meta.json`` holds."""
        meta, splits = read_graph_dir(graphs_dir, SPLITS)
        return GraphData(meta, splits)

    @property
    def version(self) -> str:
        """The data version, content-addressed (:func:`pipeline.graphs.store.data_version`)."""
        return data_version(self.meta, self.derived)


def final_metrics(r: dict) -> dict[str, float]:
    """What MLflow shows for a finished run (test metrics at the best validation epoch)."""
    return {
        **{f"test_{k}": v for k, v in r["test"].items()},
        f"best_val_{r['select']}": r["best_val"],
        "best_epoch": r["best_epoch"],
        "n_params": r["n_params"],
        "seconds_per_epoch": r["seconds_per_epoch"],
    }


def run_training(
    params: Params,
    data: GraphData,
    out: Path,
    *,
    stage: str,
    kind: JobKind,
    models: list[str],
    seeds: list[int],
    settings: TrainSettings,
    model_configs: dict,
    augment: str,
    threads: int,
    extra: dict | None = None,
    worker: Callable[..., dict] = fit_job,
) -> list[dict]:
    """Train every (model, seed) on ``data`` for task ``kind`` as Ray tasks (resumable, tracked
    live); write JSON.

    Each run is :func:`pipeline.tasks.job.fit_job` ``(data, model, model_settings, seed, ctx,
    settings, augment, kind, *extra.values())``; ``extra`` (JSON-able settings of the job, such as
    an editor's ``init_scale``) enters the runs' fingerprints and MLflow params. ``worker``
    replaces the job (tests: a job that fails on purpose).
    """
    extra = extra or {}
    try:
        fwd = forward_spec_from_meta(data.meta) if "forward" in data.meta else None
        spec = ParamSpec.from_dict(data.meta["spec"]) if data.meta.get("spec") else None  # None: several
        check_augmentation(augment, spec, fwd)
    except ValueError as e:
        raise ConfigError(f"{stage.split('@')[0]}.augment: {e}") from e
    jobs = [Job(m, s, model_configs[settings_key(m)]) for m in models for s in seeds]
    run_settings = dataclasses.asdict(settings) | {"augment": augment} | extra
    runs = StageRuns(params, stage, out, jobs, data.version, run_settings, final_metrics)
    results = runs.run(data, worker, (settings, augment, kind, *extra.values()), threads)
    for r in results:
        sel = r["select"]
        log.info(
            "%s: %8s seed %d: test %s %.4f at best val epoch %d (%.1f s/epoch)",
            stage, r["model"], r["seed"], sel, r["test"][sel], r["best_epoch"], r["seconds_per_epoch"],
        )  # fmt: skip
    return results


@dataclass(frozen=True, kw_only=True)
class Task:
    """A fitting task as a pipeline stage (:mod:`pipeline.tasks.registry`): what its job does
    (``kind``), where its settings are (``section``: ``"cnn.train"`` is ``params.cnn.train``, a
    section with ``models``, ``seeds``, ``threads_per_task``, the training fields and one
    ``Settings`` per model), its inputs and output (``paths``: option -> default, ``{variant}``
    filled in) and its variants (``"@"`` items of the stage: the CNN zoo kinds, the KAN tasks).

    ``load(section, paths)`` reads the data every job receives (default: the graphs folder
    ``paths["graphs"]``); ``models(section, variant)`` the models to run (default
    ``section.models``); ``augment`` names the section field with the augmentation (``None``: no
    augmentation, for nets without sign symmetry); ``extra`` the section fields the job takes
    besides (an editor's ``init_scale``), which enter every run's fingerprint.
    """

    kind: JobKind
    section: str
    paths: dict[str, str]
    variants: tuple[str, ...] = ()
    load: Callable[[Any, dict[str, Path]], GraphData] | None = None
    models: Callable[[Any, str], list[str]] | None = None
    augment: str | None = "augment"
    extra: tuple[str, ...] = ()

    def settings_of(self, params: Params) -> Any:
        """The task's section of ``params``."""
        section: Any = params
        for name in self.section.split("."):
            section = getattr(section, name)
        return section

    def default_paths(self, variant: str) -> dict[str, str]:
        """The task's input and output folders for ``variant`` (``""`` without variants)."""
        return {k: v.format(variant=variant) for k, v in self.paths.items()}


def run_task(params: Params, task: Task, stage: str, paths: dict[str, Path]) -> list[dict]:
    """Run stage ``stage`` (``"train"``, ``"cnn_train@homogeneous"``) of ``task``: every (model,
    seed) of its section on its data (``paths``: the task's inputs and ``out``), with
    :func:`run_training`. Raises :class:`ConfigError` for a variant the task does not have."""
    variant = stage.partition("@")[2]
    if variant not in (task.variants or ("",)):
        raise ConfigError(f"{stage}: unknown variant {variant!r}; choose from {task.variants or 'none'}")
    section = task.settings_of(params)
    data = task.load(section, paths) if task.load else GraphData.load(paths["graphs"])
    return run_training(
        params,
        data,
        paths["out"],
        stage=stage,
        kind=task.kind,
        models=task.models(section, variant) if task.models else section.models,
        seeds=section.seeds,
        settings=TrainSettings.of(section),
        model_configs=section.settings_by_model(),
        augment=getattr(section, task.augment) if task.augment else "none",
        threads=section.threads_per_task,
        extra={k: getattr(section, k) for k in task.extra},
    )
