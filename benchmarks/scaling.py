"""Ray scaling: zoo and training throughput of the real stages with 1 and 2 workers, in one run.

For each worker count a fresh local Ray cluster with that many CPUs is started (not timed),
then the ``zoo`` stage fits a SIREN zoo (``--nets`` INRs, ``--steps`` Adam steps, shards of
``--shard`` nets, one thread per task) and the ``train`` stage trains ``--runs`` NG-GNN runs on
graphs of that zoo (one thread per task). Reported: INRs/s and training graphs/s (graphs x
epochs / wall time of the stage), the speed-up of 2 workers over 1 and the efficiency
(speed-up / 2). The baseline is the 1-worker run of the same script.

Run: ``python benchmarks/scaling.py [--nets 512 --steps 100 --runs 4 --epochs 2]``. The last
line is ``efficiency: zoo E_zoo, train E_train``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import configure_logging
from pipeline.config import params_from_dict


def params_for(workers: int, args: argparse.Namespace, root: Path) -> dict:
    """The repository's default params, sized for the benchmark, with ``workers`` CPUs."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    n_test = max(args.nets // 8, 8)
    raw["data"] |= {"n_train": args.nets - 2 * n_test, "n_val": n_test, "n_test": n_test}
    raw["zoo"] |= {"steps": args.steps, "shard_size": args.shard, "target_psnr": 200.0, "psnr_floor": 0.0}
    raw["train"] |= {"models": ["ng_gnn"], "seeds": list(range(args.runs)), "epochs": args.epochs}
    raw["ray"] |= {"num_cpus": workers}
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    return raw


def measure(workers: int, args: argparse.Namespace) -> dict[str, float]:
    import ray

    from stages import fit, graphs, zoo

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = params_from_dict(params_for(workers, args, root))
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            zoo.run(params, "zoo", root / "zoo")
            zoo_s = time.perf_counter() - t0
            meta = graphs.run(params, root / "zoo", root / "graphs")
            t0 = time.perf_counter()
            fit.run(params, "train", graphs=root / "graphs", out=root / "train")
            train_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
    n_graphs = meta["counts"]["train"] * args.epochs * args.runs
    return {"inrs_per_s": args.nets / zoo_s, "graphs_per_s": n_graphs / train_s, "zoo_s": zoo_s, "train_s": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nets", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--shard", type=int, default=32)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    configure_logging()  # the stages' progress records
    res = {w: measure(w, args) for w in (1, 2)}
    print(f"{'workers':>7} | {'zoo INRs/s':>10} | {'zoo s':>6} | {'train graphs/s':>14} | {'train s':>7}")
    for w, r in res.items():
        row = f"{r['inrs_per_s']:>10.1f} | {r['zoo_s']:>6.1f} | {r['graphs_per_s']:>14.1f} | {r['train_s']:>7.1f}"
        print(f"{w:>7} | {row}")
    zoo_x = res[2]["inrs_per_s"] / res[1]["inrs_per_s"]
    train_x = res[2]["graphs_per_s"] / res[1]["graphs_per_s"]
    print(f"speed-up 2 vs 1 workers: zoo {zoo_x:.2f}x, train {train_x:.2f}x")
    print(f"efficiency: zoo {zoo_x / 2:.2f}, train {train_x / 2:.2f}")


if __name__ == "__main__":
    main()
