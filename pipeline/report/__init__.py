"""The report: ``results.md``, ``metrics.json``, per-epoch CSVs and figures from the stages'
results, one module per section (plain functions: dicts and files in, text and PNGs out).

INR classification comes first (:mod:`pipeline.report.inr`, with the comparison to the official
code, :mod:`~pipeline.report.reference`, and the zoo-regime study, :mod:`~pipeline.report.regime`);
then every task section of :data:`TASK_SECTIONS`, in its order. A task section is a function
``section(stage_dir, params, figures_dir) -> Section | None`` (``None`` while its stage has not
run); a new task adds its module and one entry there. Model names and labels come from the model
registry, published numbers and claims from ``pipeline/published_results.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before any section imports pyplot: figures are files, never windows

from pipeline.report import adaptation, cnn, editing, inr, kan, l2o  # noqa: E402
from pipeline.report.section import Section  # noqa: E402

TASK_SECTIONS: dict[str, Callable[..., Section | None]] = {
    "edit": editing.section,
    "kan": kan.section,
    "cnn": cnn.section,
    "adapt": adaptation.section,
    "l2o": l2o.section,
}


def build_report(params, dirs: dict[str, Path], out: Path) -> tuple[Section, dict]:
    """The whole report from the stages' folders ``dirs`` (``zoo``, ``graphs``, ``train``,
    ``reference``, ``regime``, and one per key of :data:`TASK_SECTIONS`; a missing key skips its
    section): figures and curves written under ``out``; returns the report (Markdown, metrics,
    figure names) and the INR classification summary per model."""
    main, summary = inr.section(dirs, params, out)
    tasks = [
        s
        for key, section in TASK_SECTIONS.items()
        if dirs.get(key) is not None and (s := section(dirs[key], params, out / "figures")) is not None
    ]
    return (
        Section(
            main.markdown + "".join("\n" + s.markdown for s in tasks),
            main.metrics | {k: v for s in tasks for k, v in s.metrics.items()},
            main.figures + tuple(f for s in tasks for f in s.figures),
        ),
        summary,
    )
