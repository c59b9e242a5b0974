"""experiments/budget_curve.py end to end on tiny graphs: real Ray runs, resumable parts, claims per budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.io import read_json
from tests.conftest import REPO, write_params, write_tiny_graphs

pytestmark = pytest.mark.slow

MODELS = {"mlp", "statnn", "dwsnet", "nfn", "ng_gnn", "ng_t"}


def _budget(cwd: Path, *parts: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, str(REPO / "experiments" / "budget_curve.py"), "--paper", "paper.yaml", "--parts", *parts]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_parts_train_resume_and_recheck_the_claims_at_every_budget(project: Path):
    write_tiny_graphs(project / "data" / "graphs")
    small = {"hidden": 4, "layers": 2}
    widths = {m: small for m in ("dwsnet", "nfn")} | {"ng_t": {"hidden": 8, "layers": 2, "heads": 2}}
    write_params(project / "paper.yaml", {"train": widths | {"ng_gnn": {"hidden": 8, "layers": 3}}})
    done = _budget(project, "1x", "4x-published")
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_json(project / "reports" / "budget" / "budget_curve.json")
    parts = record["parts"]
    assert set(parts) == {"1x", "4x-published"}
    epochs = read_json(project / "data" / "budget" / "1x" / "results.json")["runs"][0]["history"]
    assert len(epochs) == 2 and parts["4x-published"]["epochs"] == 8  # 4 x the profile's 2 epochs
    assert {(r["model"], r["seed"]) for r in parts["1x"]["runs"]} == {(m, s) for m in MODELS for s in (0, 1, 2)}
    published = {r["model"]: r["config"] for r in parts["4x-published"]["runs"]}
    assert published["ng_t"]["hidden"] == 8 and published["dwsnet"]["hidden"] == 4  # the paper file's widths
    assert all(len(r["test_predictions"]) == 16 for p in parts.values() for r in p["runs"])
    claims = {c["text"]: c for c in record["claims"]}
    assert "NG-GNN beats DWSNet" in claims
    for c in claims.values():  # every claim has a verdict at every part, with its interval
        for name in parts:
            v = c[name]
            assert v["verdict"] in {"holds", "**fails**", "inconclusive", "holds (a tie)"}
            assert v["lo"] <= v["diff"] <= v["hi"]
    md = (project / "reports" / "budget" / "budget_curve.md").read_text()
    assert "Not run: 4x, 16x." in md and "| NG-GNN beats DWSNet |" in md
    assert (project / "reports" / "budget" / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"
    # a second invocation keeps the finished runs and only rewrites the report
    again = _budget(project, "1x")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "18 runs, 18 kept from an earlier invocation, running 0" in again.stdout + again.stderr
    assert set(read_json(project / "reports" / "budget" / "budget_curve.json")["parts"]) == {"1x", "4x-published"}
