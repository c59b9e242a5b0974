"""Shared fixtures: a tiny profile of the real pipeline (real Ray, real MLflow, real DVC)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.weightspace.spec import Params, ParamSpec, unflatten
from pipeline.zoo.siren import init_sirens, siren_spec

REPO = Path(__file__).resolve().parents[1]

# two SIREN layouts for every symmetry test: the default, and three hidden layers of different widths
LAYOUTS = [[32, 32], [16, 24, 8]]
LAYOUT_IDS = ["hidden32x32", "hidden16-24-8"]


def siren_params(hidden: list[int], seeds) -> tuple[ParamSpec, Params]:
    """Freshly initialized SIRENs (one per seed) as a zoo batch."""
    spec = siren_spec(hidden)
    flat = init_sirens(spec, list(seeds), 30.0, "standard")
    return spec, {k: v.clone() for k, v in unflatten(flat, spec).items()}


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: object = "") -> None:
    """``|actual - expected| <= rel * max|expected|`` entry for entry: for two results of the same
    computation whose floats were summed in another order (another batch composition, another
    kernel), where rounding differences may grow over training steps; ``rel`` says how far,
    relative to the tensor's own scale. ``what`` names the tensor in the failure message."""
    atol = rel * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}" if what != "" else m)


# Fixtures that run stages (Ray, DVC, subprocesses): every test using one, directly or through
# another fixture, is marked slow. Tests that start Ray or a subprocess themselves carry
# @pytest.mark.slow. The working loop: python -m pytest -m "not slow".
STAGE_FIXTURES = frozenset(
    {"project", "adapt_zoos", "adapted", "cnn_zoos", "cnn_trained", "kan_zoos", "l2o_run", "trained"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STAGE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread (tiny ops on a shared 2-core box spin-wait otherwise)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {
    "seed": 0,
    "data": {"n_train": 48, "n_val": 16, "n_test": 16},
    "zoo": {"steps": 40, "shard_size": 16, "chunk_size": 8, "psnr_floor": 5.0},
    "train": {
        "models": ["mlp", "ng_gnn"],
        "seeds": [0, 1],
        "epochs": 2,
        "batch_size": 16,
        "warmup_steps": 2,
        "mlp": {"hidden": 32, "layers": 2},
        "ng_gnn": {"hidden": 8, "layers": 3, "fourier_features": 4},
    },
    "edit": {
        "models": ["dwsnet", "ng_gnn"],
        "seeds": [0, 1],
        "epochs": 2,
        "n_train": 24,
        "batch_size": 16,
        "warmup_steps": 2,
        "dwsnet": {"hidden": 4, "layers": 2},
        "ng_gnn": {"hidden": 8, "layers": 3, "fourier_features": 4, "probe_features": 2},
    },
    "kan": {
        "inr": {"n_train": 24, "n_val": 8, "n_test": 8, "steps": 20},
        "classifier": {"n_train": 24, "n_val": 8, "n_test": 8, "steps": [10, 20]},
        "shard_size": 16,
        "chunk_size": 8,
        "train": {
            "seeds": [0, 1],
            "epochs": 2,
            "batch_size": 16,
            "warmup_steps": 2,
            "mlp": {"hidden": 32, "layers": 2},
            "ng_gnn": {"hidden": 8, "layers": 3, "fourier_features": 4},
            "ws_kan": {"hidden": 8, "layers": 3},
        },
        "forward": {
            "seeds": [0, 1],
            "steps": 8,
            "kans_per_step": 4,
            "points_per_kan": 2,
            "eval_every": 4,
            "eval_points": 2,
            "ws_kan": {"hidden": 8, "layers": 3},
        },
    },
    "cnn": {
        "homogeneous": {"runs_per_architecture": 8, "n_val": 2, "n_test": 2},
        "heterogeneous": {"n_architectures": 2, "runs_per_architecture": 4, "n_val": 1, "n_test": 1},
        "digits_test": 200,
        "steps": [10, 20],
        "checkpoints": 2,
        "shard_size": 4,
        "chunk_size": 4,
        "train": {
            "models": ["mlp", "statnn", "ng_gnn"],
            "heterogeneous_models": ["statnn", "ng_gnn"],
            "seeds": [0, 1],
            "epochs": 2,
            "batch_size": 8,
            "warmup_steps": 2,
            "mlp": {"hidden": 32, "layers": 2},
            "statnn": {"hidden": 16, "layers": 2},
            "ng_gnn": {"hidden": 8, "layers": 6, "fourier_features": 4},
        },
    },
    "adapt": {
        "zoo": {
            "n_nets": 90,
            "n_val": 9,
            "n_test": 9,
            "novel_pairs": 2,
            "hidden": [8, 8],
            "steps": 30,
            "shard_size": 45,
        },
        "models": ["mlp", "dwsnet"],
        "seeds": [0, 1],
        "epochs": 2,
        "batch_size": 16,
        "warmup_steps": 2,
        "mlp": {"hidden": 32, "layers": 2},
        "dwsnet": {"hidden": 4, "layers": 2},
    },
    "l2o": {
        "optimizers": ["ng_gnn", "ff", "adam", "sgd"],
        "seeds": [0, 1],
        "meta_task": {"hidden": [8]},
        "test_task": {"pool": 4, "hidden": [12]},
        "outer_steps": 4,
        "unroll": 3,
        "horizon": 6,
        "n_optimizees": 2,
        "graph_hidden": 8,
        "eval_steps": 12,
        "eval_nets": 2,
        "baseline_lrs": [1.0e-2, 1.0e-1],
    },
    "ray": {"num_cpus": 2},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """Repo defaults overridden by the tiny profile (and ``overrides``), as a params file."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge(merge(base, TINY), overrides or {})
    params["mlflow"]["tracking_uri"] = f"sqlite:///{path.parent / 'mlflow.db'}"
    path.write_text(yaml.safe_dump(params))
    return path


def entry_args(stage: str) -> list[str]:
    """What follows ``python -m`` to run DVC stage ``stage``: a zoo stage through ``stages.zoo``
    (:mod:`pipeline.zoo.registry`), a fitting task through ``stages.fit``
    (:mod:`pipeline.tasks.registry`), any other as ``stages.<stage>``."""
    from pipeline.tasks import registry as tasks
    from pipeline.zoo import registry as zoos

    return [zoos.ENTRY, stage] if stage.split("@")[0] in zoos.FAMILY_MODULES else tasks.entry_args(stage)


def stage_modules(stage: str) -> tuple[str, ...]:
    """The modules DVC stage ``stage`` runs (its entry point first), as :func:`entry_args`."""
    from pipeline.tasks import registry as tasks
    from pipeline.zoo import registry as zoos

    return zoos.stage_modules(stage) if stage.split("@")[0] in zoos.FAMILY_MODULES else tasks.stage_modules(stage)


def run_stage(stage: str, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run DVC stage ``stage`` as a user would (own process, own local Ray cluster): ``python -m``
    and :func:`entry_args` (``stages.fit cnn_train@homogeneous``, ``stages.zoo kan_zoo@inr``)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", *entry_args(stage), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the project (code, dvc.yaml) inside a new Git + DVC repository."""
    dst = tmp_path / "proj"
    dst.mkdir()
    for item in ("pipeline", "stages"):
        shutil.copytree(REPO / item, dst / item, ignore=shutil.ignore_patterns("__pycache__"))
    # the last two: sections of the report (the zoo-regime study, the official code side by side)
    reference = ("reports/reference/side_by_side.json", "reports/reference/side_by_side.md")
    for item in ("dvc.yaml", ".gitignore", "reports/zoo_regime/regime.json", *reference):
        (dst / item).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / item, dst / item)
    write_params(dst / "params.yaml")
    # mlflow.db is written next to params.yaml's parent: keep the store inside the repo copy
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = f"sqlite:///{dst / 'mlflow.db'}"
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=dst, check=True)
    shutil.copy(REPO / ".dvcignore", dst / ".dvcignore")  # after ``dvc init``, which writes its own
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dst, check=True)
    return dst


def write_tiny_graphs(out: Path, hidden: list[int] | None = None, sizes: dict[str, int] | None = None) -> Path:
    """A graphs directory (``meta.json`` + splits) of freshly initialized SIRENs with random digit
    labels, written without fitting a zoo: input for the training stage in seconds."""
    from pipeline.graphs.neural_graph import graph_template
    from pipeline.graphs.store import GraphSet, write_graph_dir
    from pipeline.weightspace.normalize import apply_stats, fit_stats

    sizes = sizes or {"train": 48, "val": 16, "test": 16}
    spec, params = siren_params(hidden or [8, 8], range(sum(sizes.values())))
    stats = fit_stats(params, spec)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (sum(sizes.values()),), generator=g)
    template = graph_template(spec)
    start, sets = 0, {}
    for split, n in sizes.items():
        idx = torch.arange(start, start + n)
        part = apply_stats({k: v[idx] for k, v in params.items()}, spec, stats)
        sets[split] = GraphSet.from_params(part, template, labels[idx], idx)
        start += n
    forward = {"activation": "sin", "omega0": 30.0, "output_offset": 0.0}
    meta = {"spec": spec.to_dict(), "norm_stats": stats, "forward": forward, "n_pos": template.n_pos, "counts": sizes}
    meta |= {"task": "inr", "kind": "classification", "n_targets": 10, "excluded": dict.fromkeys(sizes, 0)}
    write_graph_dir(out, sets, meta)
    return out
