"""DVC stage ``kan_forward``: the WS-KAN expressivity check on the KAN-INR zoo, as Ray tasks.

Every (model, seed) of ``kan.forward`` learns to predict a KAN-INR's own output at a query
point from its KAN-graph (:mod:`pipeline.kan_forward`), on fresh points every step; validation
and test KANs are held out. Results (with the position-only reference) go to
``<out>/results.json`` in the format of the other training stages, and to MLflow; runs resume
and are tracked live as in ``train`` (:mod:`pipeline.runs`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.config import Params
from pipeline.io import fingerprint, read_json
from pipeline.kan_forward import final_metrics, forward_one, load_forward_data, settings_from
from pipeline.models import settings_key
from pipeline.runs import Job, StageRuns
from stages.common import parse, reported_errors

log = logging.getLogger("stages.kan_forward")  # its name also when run as ``python -m``


def run(params: Params, zoo_dir: Path, out: Path) -> list[dict]:
    fc = params.kan.forward
    settings = settings_from(fc)
    configs = fc.settings_by_model()
    jobs = [Job(m, s, configs[settings_key(m)]) for m in fc.models for s in fc.seeds]
    data_version = fingerprint(
        {"zoo": read_json(zoo_dir / "zoo.json"), "manifest": (zoo_dir / "manifest.csv").read_text()}
    )
    runs = StageRuns(params, "kan_forward", out, jobs, data_version, dataclasses.asdict(settings), final_metrics)
    results = runs.run(load_forward_data(zoo_dir), forward_one, (settings,), fc.threads_per_task)
    for r in results:
        log.info(
            "kan_forward: %8s seed %d: test R² %.4f at best val evaluation %d (position-only reference %.4f)",
            r["model"], r["seed"], r["test"]["r2"], r["best_epoch"], r["reference"]["r2"],
        )  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, {"zoo": "data/kan/inr/zoo", "out": "data/kan/inr_forward/train"}, argv)
    with reported_errors("kan_forward", Path(args.out)):
        run(params, Path(args.zoo), Path(args.out))


if __name__ == "__main__":
    main()
