"""Ray fan-out: start or join a cluster, check it can run the tasks, map a function over work items.

Only stages import this module; everything it runs is a plain function from ``pipeline``. Tasks
never touch the driver's disk: large inputs go through Ray's object store (``ray.put`` once,
passed by reference), tasks return tensors and results, and the driver writes them.

The code travels with the job: :func:`init_ray` ships this checkout to every node as the job's
``runtime_env`` working directory (:func:`project_runtime_env`), so a worker node needs Python,
Ray and the dependencies but not the project. Every task returns the environment that ran it
(:func:`pipeline.provenance.worker_environment`); a result made by other code than the driver's
is refused, never written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from pipeline.config import ConfigError, RayConfig
from pipeline.device import cap_gpu_memory
from pipeline.provenance import ROOT, project_hash, worker_environment

GIB = 1024**3
log = logging.getLogger(__name__)


# what a worker does not need of the checkout: data, tracking stores, VCS and tool caches
SHIPPING_EXCLUDES = (
    "/data/", "/mlartifacts/", "/mlruns/", "/mlflow.db", "/.mlflow.db.lock", "/.dvc/", "/.git/", "/reports/",
    "/.venv/", "/.benchmarks/", "__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/",
)  # fmt: skip


def project_runtime_env() -> dict[str, Any] | None:
    """The Ray ``runtime_env`` that ships this checkout (``pipeline``, ``stages`` and the rest of
    the project, without :data:`SHIPPING_EXCLUDES`) to every node as the job's working directory,
    with the driver's ``METAZOO_*`` switches (every task sees what the driver's fingerprints say).

    ``None`` inside a job submitted with ``ray job submit --working-dir``: that job's own working
    directory already travels (and Ray ignores a driver's ``runtime_env`` inside a submitted job).
    """
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    if job.get("runtime_env", {}).get("working_dir"):
        return None
    env = {"working_dir": str(ROOT), "excludes": list(SHIPPING_EXCLUDES)}
    switches = {k: v for k, v in os.environ.items() if k.startswith("METAZOO_")}  # METAZOO_KAN_KERNEL, ...
    return env | ({"env_vars": switches} if switches else {})


def init_ray(cfg: RayConfig) -> dict[str, float]:
    """Join or start a Ray cluster as ``cfg.address`` says; return the cluster's resources.

    ``""``: ``RAY_ADDRESS`` if set (``ray job submit`` sets it), else a local cluster of this
    process's own, with ``cfg.num_cpus`` CPUs (0: all), even when a ``ray start`` cluster runs on
    the machine. ``"auto"`` joins that cluster; ``"host:port"`` / ``"ray://..."`` joins the one
    named. ``num_cpus`` is only passed when starting a cluster (Ray refuses it when joining).
    Either way the project's code ships with the job (:func:`project_runtime_env`).
    """
    import ray

    if not ray.is_initialized():
        project_hash()  # the driver's code, hashed as it is shipped: an edit after this is refused
        address = cfg.address or os.environ.get("RAY_ADDRESS", "")
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if (env := project_runtime_env()) is not None:
            kwargs["runtime_env"] = env
        if address:
            ray.init(address=address, **kwargs)
        else:
            kwargs |= {"address": "local", "include_dashboard": False}
            if cfg.num_cpus > 0:
                kwargs["num_cpus"] = cfg.num_cpus
            ray.init(**kwargs)
    return dict(ray.cluster_resources())


def task_device(cfg: RayConfig) -> str:
    """The device tasks run on, decided from the params alone (so it can enter fingerprints).

    ``auto`` is ``cuda`` when tasks reserve a GPU fraction and ``cpu`` otherwise: Ray hides every
    GPU from a task that reserves none.
    """
    if cfg.device == "cuda" or (cfg.device == "auto" and cfg.gpus_per_task > 0):
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class TaskResources:
    """What one task asks Ray for. ``memory`` in bytes (0: no reservation)."""

    num_cpus: float
    num_gpus: float = 0.0
    memory: int = 0


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor reachable through dataclasses, dicts, lists and tuples of ``obj``."""
    import dataclasses

    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def task_memory(data_bytes: int, factor: float = 4.0, base: int = GIB // 2) -> int:
    """Memory to reserve for a task holding ``data_bytes`` of input: a copy deserialized from the
    object store, the model's views of it (flattened, batched) and activations, plus the
    interpreter and libraries (``base``)."""
    return int(base + factor * data_bytes)


def check_resources(need: TaskResources, wait_s: float = 0.0, poll_s: float = 5.0) -> None:
    """Fail before any work when no node can run a task, naming the resource and the key to change.

    Checked per node (a task runs on one): CPUs, GPUs and memory. With ``wait_s > 0`` (an
    autoscaling cluster, ``ray.wait_for_nodes_s``) the check is repeated every ``poll_s``
    seconds until a node fits or ``wait_s`` has passed.
    """
    deadline = time.monotonic() + wait_s
    while (short := _shortfall(need)) is not None:
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_s:g} s for one" if wait_s > 0 else ""
            raise ConfigError(short.replace("; change", f"{waited}; change", 1))
        log.info("%s; waiting for a node (ray.wait_for_nodes_s)", short.split(";")[0])
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))


def _shortfall(need: TaskResources) -> str | None:
    """Why no node of the cluster can run a task needing ``need`` (the message and the key), or ``None``."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    wanted = (
        ("CPU", need.num_cpus, "CPUs", "*.threads_per_task"),
        ("GPU", need.num_gpus, "GPUs", "ray.gpus_per_task (0 on a CPU-only cluster)"),
        ("memory", need.memory, "bytes of memory", "the data size (fewer INRs) or a node with more memory"),
    )
    for key, amount, unit, knob in wanted:
        if amount <= 0:
            continue
        best = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if best < amount:
            shown = f"{amount / GIB:.2f} GiB" if key == "memory" else f"{amount:g} {unit}"
            have = f"{best / GIB:.2f} GiB" if key == "memory" else f"{best:g}"
            return (
                f"each task needs {shown} ({key}), but no node of the Ray cluster has that much "
                f"(largest: {have} over {len(nodes)} node(s)); change {knob} (or ray.wait_for_nodes_s "
                "on an autoscaling cluster)"
            )
    return None


class _Refused(Exception):
    """A task's result that the driver does not keep (:func:`refusal`)."""


class TasksFailed(RuntimeError):
    """Some tasks raised (after the others finished and their results were delivered)."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        lines = "\n".join(f"  {label}: {err}" for label, err in failures.items())
        super().__init__(f"{len(failures)} task(s) failed, the others finished and were kept:\n{lines}")


OUT_OF_MEMORY_ADVICE = (
    "the task ran out of GPU memory: lower the failing stage's batch (its batch_size, e.g. train.batch_size; "
    "for a zoo its chunk_size: zoo.chunk_size, kan.chunk_size, cnn.chunk_size) or raise ray.gpus_per_task so "
    "fewer tasks share a GPU; finished results are kept and the next invocation resumes"
)


def error_text(e: BaseException) -> str:
    """One line for a failed task: the exception a task raised (unwrapped from Ray's), and for a
    CUDA out-of-memory error the keys that fix it (:data:`OUT_OF_MEMORY_ADVICE`)."""
    import torch

    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[-1] if text else ''}"
    return f"{line} ({OUT_OF_MEMORY_ADVICE})" if isinstance(e, torch.OutOfMemoryError) else line


def _traced(fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, str]]:
    """``fn(*args)`` inside a task, with the environment that ran it (its code hash first); a task
    holding a fraction of a GPU is held to that fraction of its memory (:func:`cap_gpu_memory`)."""
    import ray

    cap_gpu_memory(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    return fn(*args), worker_environment()


def refusal(env: dict[str, str], expect: dict[str, str] | None = None) -> str | None:
    """Why a task's result must be refused, or ``None`` to keep it: it ran other project code
    than this driver's (a node that imported another checkout), or in another environment than
    ``expect`` (what the fingerprints of the stage's results say made their bytes: the CPU kind,
    torch version, KAN backend)."""
    where = f"on host {env.get('host')}"
    if env.get("code") != project_hash():
        return (
            f"ran other code than this driver's (project hash {env.get('code')} {where}, the driver's "
            f"{project_hash()}): the stage ships its checkout to every node, so that node imports `pipeline` "
            "from another install on its path; remove it there, or install this checkout"
        )
    # a key the task does not report is code it never ran (a KAN backend in a net too small for it)
    differ = {k: (env[k], v) for k, v in (expect or {}).items() if k in env and env[k] != v}
    if differ:
        text = ", ".join(f"{k} {got!r} where the fingerprint says {want!r}" for k, (got, want) in differ.items())
        return (
            f"made {where} with {text}: its bytes are not the ones its fingerprint describes; run this stage "
            "where the workers' environment matches the driver's (or on one machine kind)"
        )
    return None


def on_every_node(fn: Callable[[], Any], resources: TaskResources) -> dict[str, tuple[Any, dict[str, str]]]:
    """``fn()`` once on every alive node that can run a task needing ``resources``, before the
    stage's tasks start (a node's one-time preparation: building a kernel there, so that a node
    that cannot says so once); ``{node id: (result, environment)}``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    wanted = {"CPU": resources.num_cpus, "GPU": resources.num_gpus}
    nodes = [
        n["NodeID"]
        for n in ray.nodes()
        if n.get("Alive") and all(n["Resources"].get(k, 0.0) >= v for k, v in wanted.items() if v > 0)
    ]
    remote = ray.remote(_traced)
    name, cpus, gpus = getattr(fn, "__name__", "prepare"), resources.num_cpus, resources.num_gpus
    refs = {
        node: remote.options(
            name=name,
            num_cpus=cpus,
            num_gpus=gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(fn)
        for node in nodes
    }
    return {node: ray.get(ref) for node, ref in refs.items()}


def map_tasks(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    *,
    resources: TaskResources,
    max_retries: int = 2,
    desc: str = "tasks",
    labels: Sequence[str] | None = None,
    on_result: Callable[[int, Any, dict[str, str]], None] | None = None,
    on_error: Callable[[int, str], None] | None = None,
    poll: Callable[[], None] | None = None,
    poll_seconds: float = 0.5,
    retry_item: Callable[[int], tuple] | None = None,
    expect: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(*item)`` for every item as a Ray task; results in item order.

    Object references at the top level of an item are resolved by Ray before ``fn`` runs (put a
    large input once, pass its reference to every task). A dead worker or node is retried
    ``max_retries`` times; an exception raised by ``fn`` is not (a bug or bad input): it is
    reported to ``on_error(i, message)``, every other task still runs, and at the end
    :class:`TasksFailed` names the failed items (``labels[i]``); so is a result made by other
    code than the driver's, or in an environment other than ``expect`` (:func:`refusal`).
    ``on_result(i, result, env)`` runs in the driver as each task finishes (to write it, to log
    it from one process), with the environment the task ran in
    (:func:`pipeline.provenance.worker_environment`); ``poll()`` runs every ``poll_seconds``
    while tasks run (to forward live metrics). With ``retry_item``, the driver retries a lost
    task itself with the arguments ``retry_item(i)`` returns then (a
    training run resumes from its latest checkpoint) instead of Ray repeating the first ones.
    """
    import ray

    if not items:
        return []
    labels = list(labels) if labels is not None else [f"{desc} {i}" for i in range(len(items))]
    remote = ray.remote(_traced).options(
        name=getattr(fn, "__name__", "task"),  # the task (and its worker process title) named after fn
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        memory=resources.memory or None,
        max_retries=0 if retry_item is not None else max_retries,
        retry_exceptions=False,
    )
    refs = [remote.remote(fn, *item) for item in items]
    index = {ref: i for i, ref in enumerate(refs)}
    retries = [0] * len(refs)
    results: list[Any] = [None] * len(refs)
    failures: dict[str, str] = {}
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", dynamic_ncols=True) as bar:
        last_poll = 0.0
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=poll_seconds if poll else None)
            for ref in done:
                i = index.pop(ref)
                try:
                    results[i], env = ray.get(ref)
                    if (refused := refusal(env, expect)) is not None:
                        results[i] = None
                        raise _Refused(refused)
                except _Refused as e:
                    failures[labels[i]] = str(e)
                    if on_error is not None:
                        on_error(i, failures[labels[i]])
                except ray.exceptions.RayTaskError as e:  # fn raised: a bug or bad input, not retried
                    failures[labels[i]] = error_text(e)
                    if on_error is not None:
                        on_error(i, failures[labels[i]])
                except Exception as e:  # the worker or its node died
                    if retry_item is not None and retries[i] < max_retries:
                        retries[i] += 1
                        if poll is not None:
                            poll()  # its last checkpoint first
                        log.warning("%s: %s; retry %d/%d", labels[i], error_text(e), retries[i], max_retries)
                        new = remote.remote(fn, *retry_item(i))
                        index[new] = i
                        pending.append(new)
                        continue
                    failures[labels[i]] = error_text(e)
                    if on_error is not None:
                        on_error(i, failures[labels[i]])
                else:
                    if poll is not None:
                        poll()  # its last metrics first
                    if on_result is not None:
                        on_result(i, results[i], env)
                bar.update(1)
            if poll is not None and time.monotonic() - last_poll >= poll_seconds:
                poll()
                last_poll = time.monotonic()
    if poll is not None:
        poll()
    if failures:
        raise TasksFailed(failures)
    return results
