"""The driver's checks on what a task returns: shipped code, the code and environment that made a
result (no cluster needed: these are the pure functions :func:`map_tasks` applies)."""

from __future__ import annotations

import json

from pipeline.distributed import SHIPPING_EXCLUDES, error_text, project_runtime_env, refusal
from pipeline.provenance import ROOT, project_hash, recipe_environment, worker_environment


def test_the_checkout_ships_without_data_stores_or_vcs(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("METAZOO_KAN_KERNEL", raising=False)
    env = project_runtime_env()
    assert env == {"working_dir": str(ROOT), "excludes": list(SHIPPING_EXCLUDES)}
    for kept_out in ("/data/", "/mlartifacts/", "/.dvc/", "/.git/", "/mlflow.db"):
        assert kept_out in env["excludes"]
    monkeypatch.setenv("METAZOO_KAN_KERNEL", "0")  # the driver's switches travel with the code
    assert project_runtime_env()["env_vars"] == {"METAZOO_KAN_KERNEL": "0"}
    # inside `ray job submit --working-dir` the job's own directory travels instead
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert project_runtime_env() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))
    assert project_runtime_env() is not None  # a job without a working directory: ship it


def test_a_result_of_other_code_or_another_environment_is_refused():
    env = worker_environment()
    assert env["code"] == project_hash() and env["torch"] and env["cpu"]
    assert refusal(env) is None
    assert refusal(env, {"torch": env["torch"], "cpu": env["cpu"]}) is None
    other = refusal(env | {"code": "0" * 16})
    assert other is not None and "0" * 16 in other and project_hash() in other
    cpu = refusal(env, {"cpu": "another-cpu"})
    assert cpu is not None and "another-cpu" in cpu and env["host"] in cpu
    # a backend the task never reached (no KAN fitted in it) is not held against it
    assert "kan_backend" not in env or refusal(env, {"kan_backend": env["kan_backend"]}) is None
    assert refusal({k: v for k, v in env.items() if k != "kan_backend"}, {"kan_backend": "fused-cpu"}) is None


def test_a_recipe_names_the_environment_a_worker_must_match():
    environment = {"code": "c", "torch": "2.x", "cpu": "abc", "cpu_capability": "AVX2"}
    assert recipe_environment({"environment": environment}) == {"torch": "2.x", "cpu": "abc", "cpu_capability": "AVX2"}
    kan = recipe_environment({"environment": environment, "backend": "fused-cpu"})
    assert kan["kan_backend"] == "fused-cpu"
    assert recipe_environment({"environment": environment, "device": "cuda"}) == {"torch": "2.x"}
    assert recipe_environment({"environment": environment, "backend": "torch-cuda"}) == {"torch": "2.x"}


def test_a_task_out_of_gpu_memory_is_reported_with_the_keys_that_fix_it():
    import torch

    oom = error_text(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.startswith("OutOfMemoryError: CUDA out of memory") and "train.batch_size" in oom
    assert "ray.gpus_per_task" in oom
    assert error_text(ValueError("bad input")) == "ValueError: bad input"  # other errors as they are
