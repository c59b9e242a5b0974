"""One long training of a SIREN metanetwork (NG-GNN by default), outside the pipeline and CI.

Trains ``--model`` with the default profile's settings (``params.yaml: train`` and
``train.<model>``: probe features, batch, learning rate, augmentation) for ``--epochs`` epochs
instead of ``train.epochs``, on the graphs of ``dvc repro`` (``data/graphs``), one seed, and
writes the learning curve (validation accuracy and the test accuracy at the best validation
epoch so far, per epoch) to ``reports/long_runs/<model>.{json,png}``. It shows how far the
default profile's epoch budget is from convergence.

Run: ``python experiments/ng_gnn_long_run.py [--model ng_gnn --epochs 200 --threads 2]``
(NG-GNN: about an hour on 2 cores; ``--model dwsnet --epochs 40 --threads 1``: 10 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from pipeline.config import load_params
from pipeline.io import write_json
from pipeline.report.reference import plot_long_run_epochs
from pipeline.runs import GraphData, TaskContext
from pipeline.tasks.job import fit_job
from pipeline.tasks.prediction import PREDICTION
from pipeline.train import TrainSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--graphs", default="data/graphs")
    ap.add_argument("--model", default="ng_gnn")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", default="reports/long_runs")
    args = ap.parse_args()

    tc = load_params(args.params).train
    settings = TrainSettings(args.epochs, tc.batch_size, tc.lr, tc.weight_decay, tc.warmup_steps, tc.grad_clip)
    t0 = time.time()
    ctx = TaskContext(f"{args.model}-seed{args.seed}", args.threads, args.device)
    data = GraphData.load(args.graphs)
    record = fit_job(data, args.model, tc.settings(args.model), args.seed, ctx, settings, tc.augment, PREDICTION)
    del record["weights"], record["card"]  # the trained weights: kept by the training stages, not here
    record |= {"threads": args.threads, "default_epochs": tc.epochs, "settings": dataclasses.asdict(settings)}
    out = Path(args.out)
    write_json(out / f"{args.model}.json", record)
    plot_long_run_epochs(record, out / f"{args.model}.png")
    at_default = record["history"][min(tc.epochs, args.epochs) - 1]
    print(
        f"{args.model}: test acc {record['test']['acc']:.4f} at best val epoch {record['best_epoch']}/{args.epochs}; "
        f"at the default {tc.epochs} epochs: test acc at best val {at_default['test_acc_at_best_val']:.4f}; "
        f"{time.time() - t0:.0f} s on {args.threads} threads"
    )


if __name__ == "__main__":
    main()
