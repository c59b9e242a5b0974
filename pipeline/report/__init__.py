"""The report: ``results.md``, ``metrics.json``, per-epoch CSVs and figures from the stages'
results, one module per section (plain functions: dicts and files in, text and PNGs out).

INR classification comes first (:mod:`pipeline.report.inr`, with the comparison to the official
code, :mod:`~pipeline.report.reference`, and the zoo-regime study, :mod:`~pipeline.report.regime`);
then every task section (:func:`task_sections`), in their ``ORDER``. A task section is a module
of this package, found by name, that defines

- ``KEY``: its stage folder's option of ``python -m stages.report`` (``--adapt``) and its key in
  the folders :func:`build_report` receives; ``INPUT``: the folder's default (``data/adapt``);
- ``ORDER``: its place among the task sections;
- ``section(stage_dir, params, figures_dir) -> Section | None`` (``None`` while its stage has not
  run).

A new task adds its module and nothing else here. Model names and labels come from the model
registry, published numbers and claims from ``pipeline/published_results.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")  # before any section imports pyplot: figures are files, never windows

from pipeline.report import inr  # noqa: E402
from pipeline.report.section import Section  # noqa: E402


def task_sections() -> list[ModuleType]:
    """Every task section module of this package (one that defines ``INPUT``), in ``ORDER``."""
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return sorted((m for m in modules if hasattr(m, "INPUT")), key=lambda m: m.ORDER)


def build_report(params, dirs: dict[str, Path], out: Path) -> tuple[Section, dict]:
    """The whole report from the stages' folders ``dirs`` (``zoo``, ``graphs``, ``train``,
    ``reference``, ``regime``, and one per task section's ``KEY``; a missing key skips its
    section): figures and curves written under ``out``; returns the report (Markdown, metrics,
    figure names) and the INR classification summary per model."""
    main, summary = inr.section(dirs, params, out)
    tasks = [
        s
        for m in task_sections()
        if dirs.get(m.KEY) is not None and (s := m.section(dirs[m.KEY], params, out / "figures")) is not None
    ]
    return (
        Section(
            main.markdown + "".join("\n" + s.markdown for s in tasks),
            main.metrics | {k: v for s in tasks for k, v in s.metrics.items()},
            main.figures + tuple(f for s in tasks for f in s.figures),
        ),
        summary,
    )
