"""DVC stage ``kan_forward``: the WS-KAN expressivity check on the KAN-INR zoo, as Ray tasks.

Every (model, seed) of ``kan.forward`` learns to predict a KAN-INR's own output at a query
point from its KAN-graph (:mod:`pipeline.kan_forward`), on fresh points every step; validation
and test KANs are held out. Results (with the position-only reference) go to
``<out>/results.json`` in the format of the other training stages, and to MLflow; runs resume
and are tracked live as in ``train`` (:mod:`pipeline.runs`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from pipeline.config import ConfigError, Params
from pipeline.io import fingerprint, read_json
from pipeline.kan_forward import ForwardData, ForwardSettings, fit_forward, settings_from
from pipeline.models import build_model
from pipeline.models.saved import model_card
from pipeline.runs import Job, StageRuns, TaskContext, result_dict
from pipeline.zoo.kan_zoo import GRID_RANGE, load_kan_zoo
from stages.common import parse, reported_errors

SPLITS = ("train", "val", "test")


def load_forward_data(zoo_dir: str | Path) -> ForwardData:
    """The KAN-INR zoo (hashes checked) as a :class:`ForwardData`, non-finite nets left out."""
    spec, params, rows, _ = load_kan_zoo(zoo_dir)
    finite = torch.ones(len(rows), dtype=torch.bool)
    for v in params.values():
        finite &= torch.isfinite(v.flatten(1)).all(1)
    splits = {s: torch.tensor([i for i, r in enumerate(rows) if r["split"] == s and bool(finite[i])]) for s in SPLITS}
    for s, idx in splits.items():
        if idx.numel() == 0:
            raise SystemExit(f"kan_forward: no usable KAN in split {s!r} of {zoo_dir}")
    return ForwardData.build(params, spec, splits, GRID_RANGE)


def train_one(
    data: ForwardData, model_name: str, model_cfg, seed: int, ctx: TaskContext, settings: ForwardSettings
) -> dict:
    """Build and train one model on the forward task; return its result as a plain dict."""
    device, where = ctx.start()
    torch.manual_seed(seed)
    model = build_model(model_name, model_cfg, data.shape())
    if getattr(model, "input_kind", None) != "graph":
        raise ConfigError(f"kan.forward.models: {model_name!r} does not read graphs")
    t0 = time.time()

    def progress(row: dict) -> None:  # shown in the driver's output (Ray forwards worker prints)
        print(
            f"kan_forward {model_name} seed {seed}: step {int(row['step'])}/{settings.steps} "
            f"train loss {row['train_loss']:.3f} val R² {row['val_r2']:.3f} ({row['epoch_seconds']:.0f} s)",
            flush=True,
        )
        ctx.epoch(row)

    res = fit_forward(model, data, settings, seed, on_eval=progress, device=device)
    out = result_dict(res, model_name, seed, model_cfg, time.time() - t0)
    out["card"] = model_card(model_name, model_cfg, data.shape(), {"spec": data.spec.to_dict()}, None)
    out["counts"] = {s: int(v.numel()) for s, v in data.splits.items()}
    return out | where


def final_metrics(r: dict) -> dict[str, float]:
    return {
        **{f"test_{k}": v for k, v in r["test"].items()},
        **{f"reference_test_{k}": v for k, v in r["reference"].items()},
        "best_val_r2": r["best_val"],
        "best_epoch": r["best_epoch"],
        "n_params": r["n_params"],
        "seconds_per_epoch": r["seconds_per_epoch"],
    }


def run(params: Params, zoo_dir: Path, out: Path) -> list[dict]:
    fc = params.kan.forward
    settings = settings_from(fc)
    configs = fc.settings_by_model()
    jobs = [Job(m, s, configs[m]) for m in fc.models for s in fc.seeds]
    data_version = fingerprint(
        {"zoo": read_json(zoo_dir / "zoo.json"), "manifest": (zoo_dir / "manifest.csv").read_text()}
    )
    runs = StageRuns(params, "kan_forward", out, jobs, data_version, dataclasses.asdict(settings), final_metrics)
    results = runs.run(load_forward_data(zoo_dir), train_one, (settings,), fc.threads_per_task)
    for r in results:
        print(
            f"kan_forward: {r['model']:>8} seed {r['seed']}: test R² {r['test']['r2']:.4f} at best val evaluation "
            f"{r['best_epoch']} (position-only reference {r['reference']['r2']:.4f})"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"zoo": "data/kan/inr/zoo", "out": "data/kan/inr_forward/train"}, argv)
    with reported_errors("kan_forward"):
        run(params, Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
