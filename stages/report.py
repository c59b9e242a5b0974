"""DVC stage ``report``: metrics.json, per-epoch CSVs, results.md and figures (:mod:`pipeline.report`)."""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params, to_flat_dict
from pipeline.io import read_json, write_json, write_text
from pipeline.report import build_report, task_sections
from stages.common import parse

INPUTS = {  # the INR classification section's folders and files, then every task section's
    "zoo": "data/zoo",
    "graphs": "data/graphs",
    "train": "data/train",
    "regime": "reports/zoo_regime/regime.json",
    "reference": "reports/reference/side_by_side.json",
} | {m.KEY: m.INPUT for m in task_sections()}


def run(params: Params, dirs: dict[str, Path], out: Path) -> dict:
    """Write the report of the stages' folders ``dirs`` (keys of :data:`INPUTS`) under ``out`` and
    log it to MLflow; return the INR classification summary per model."""
    report, summary = build_report(params, dirs, out)
    write_json(out / "metrics.json", report.metrics)
    write_text(out / "results.md", report.markdown)
    version = read_json(dirs["train"] / "results.json")["data_version"]
    with tracking.stage_run(params.mlflow, "report", to_flat_dict(params), {"data_version": version}):
        for model, s in summary.items():
            key = tracking.mlflow_key(model)
            means = {f"{key}.test_acc_mean": s["test_acc_mean"], f"{key}.test_acc_std": s["test_acc_std"]}
            tracking.log_metrics(params.mlflow, means)
        for name in ("results.md", "metrics.json", *(f"figures/{f}" for f in report.figures)):
            tracking.log_artifact(params.mlflow, str(out / name))
    print(report.markdown)
    return summary


def main(argv: list[str] | None = None) -> None:
    params, args = parse(__doc__, INPUTS | {"out": "reports"}, argv)
    run(params, {k: Path(getattr(args, k)) for k in INPUTS}, Path(args.out))


if __name__ == "__main__":
    main()
