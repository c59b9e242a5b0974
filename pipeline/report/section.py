"""What a report section returns, and the metrics it puts in ``metrics.json``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """One section of the report.

    Attributes:
        markdown: its part of ``results.md``.
        metrics: its entries of ``metrics.json`` (``{key: {model: {metric: value}}}``).
        figures: the file names it wrote under ``figures/``.
    """

    markdown: str
    metrics: dict
    figures: tuple[str, ...] = ()


def metrics_of(summary: dict[str, dict]) -> dict[str, dict]:
    """The numeric entries of a per-model summary (labels and other strings dropped)."""
    return {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
