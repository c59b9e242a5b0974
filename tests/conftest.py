"""Shared fixtures: a tiny profile of the real pipeline (real Ray, real MLflow, real DVC)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

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


def run_stage(stage: str, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m stages.<stage>`` as a user would (own process, own local Ray cluster)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args],
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
    for item in ("dvc.yaml", ".gitignore"):
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
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dst, check=True)
    return dst
