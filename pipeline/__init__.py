"""metazoo: model zoos, neural graphs and metanetworks (DWSNets, Neural Graphs, WS-KAN).

The library reports through :mod:`logging` (one logger per module); the stages and the Ray
tasks call :func:`configure_logging` once, so its records reach a person with a timestamp.
"""

from __future__ import annotations

import logging


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped records on stderr, unless this process already configured logging."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
