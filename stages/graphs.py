"""DVC stage ``graphs``: zoo -> normalized neural graphs, one collated file per split."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Params, to_flat_dict
from pipeline.data import SPLITS
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import write_json
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.zoo.siren import output_offset
from pipeline.zoo.store import load_zoo
from stages.common import parse


def run(params: Params, zoo_dir: Path, out: Path) -> dict:
    from pipeline import tracking

    zoo = load_zoo(zoo_dir)
    template = graph_template(zoo.spec)
    train_params, _ = zoo.select("train")
    stats = fit_stats(train_params, zoo.spec)
    fit = zoo.info["recipe"]["fit"]
    meta = {
        "spec": zoo.spec.to_dict(),
        "norm_stats": stats,
        "forward": {"activation": "sin", "omega0": fit["omega0"], "output_offset": output_offset(fit["variant"])},
        "n_pos": template.n_pos,
        "counts": {},
        "excluded": {},
    }
    for split in SPLITS:
        p, recs = zoo.select(split)
        n_all = sum(r.split == split for r in zoo.records)
        if not recs:
            raise SystemExit(
                f"graphs: no usable INR in split {split!r} ({n_all} diverged): lower zoo.psnr_floor "
                "or fit longer (zoo.steps)"
            )
        gs = GraphSet.from_params(
            apply_stats(p, zoo.spec, stats),
            template,
            torch.tensor([r.label for r in recs]),
            torch.tensor([r.net_id for r in recs]),
        )
        gs.save(out / f"{split}.safetensors")
        meta["counts"][split] = len(gs)
        meta["excluded"][split] = n_all - len(gs)
    write_json(out / "meta.json", meta)
    excluded = sum(meta["excluded"].values())
    print(f"graphs: {meta['counts']} graphs written; {excluded} diverged nets excluded {meta['excluded']}")
    with tracking.stage_run(params.mlflow, "graphs", to_flat_dict(params), {}):
        import mlflow

        mlflow.log_metrics({f"n_{k}": v for k, v in meta["counts"].items()} | {"n_excluded": excluded})
    return meta


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"zoo": "data/zoo", "out": "data/graphs"}, argv)
    run(params, Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
