"""One long run of the expressivity check, outside the default pipeline and CI.

Trains WS-KAN (``params.yaml: kan.forward.ws_kan``) on the KAN-INR zoo (``data/kan/inr/zoo``,
made by ``dvc repro``) for ``--steps`` steps with the stage's settings otherwise, and writes the
learning curve (validation R² every ``--eval-every`` steps, test R² at the best validation
evaluation, the position-only reference) to ``reports/long_runs/kan_forward_<model>.{json,png}``.
It shows how far the default profile's 2 000 steps are from convergence.

Run: ``python experiments/kan_forward_long_run.py [--steps 20000 --threads 2]`` (about 25 min
for 20 000 steps on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from pipeline.config import load_params
from pipeline.io import write_json
from pipeline.kan_forward import fit_forward, load_forward_data, settings_from
from pipeline.models import build_model
from pipeline.report.reference import plot_long_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--zoo", default="data/kan/inr/zoo")
    ap.add_argument("--model", default="ws_kan", choices=["ws_kan", "ng_gnn"])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/long_runs")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    params = load_params(args.params)
    fc = params.kan.forward
    settings = dataclasses.replace(settings_from(fc), steps=args.steps, eval_every=args.eval_every)
    data = load_forward_data(args.zoo)
    cfg = fc.settings(args.model)
    model = build_model(args.model, cfg, data.shape())
    t0 = time.time()

    def progress(row: dict) -> None:
        print(
            f"step {int(row['step'])}/{args.steps}: train loss {row['train_loss']:.3f} val R² {row['val_r2']:.3f} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )

    res = fit_forward(model, data, settings, args.seed, on_eval=progress)
    out = Path(args.out)
    name = f"kan_forward_{args.model}"
    record = {k: v for k, v in dataclasses.asdict(res).items() if k != "best_state"} | {
        "model": args.model,
        "config": dataclasses.asdict(cfg),
        "settings": dataclasses.asdict(settings),
        "seed": args.seed,
        "threads": args.threads,
        "wall_seconds": time.time() - t0,
        "default_steps": fc.steps,
    }
    write_json(out / f"{name}.json", record)
    plot_long_run(record, out / f"{name}.png")
    print(
        f"test R² {res.test['r2']:.4f} (rel. RMSE {res.test['rel_rmse']:.3f}) at step "
        f"{res.history[res.best_epoch - 1]['step']}; position-only reference {res.reference['r2']:.4f}; "
        f"{time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
