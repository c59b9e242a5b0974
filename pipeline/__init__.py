"""metazoo: model zoos, neural graphs and metanetworks (DWSNets, Neural Graphs, WS-KAN).

The library reports through :mod:`logging` (one logger per module); the stages and the Ray
tasks call :func:`configure_logging` once, so its records reach a person with a timestamp.
"""

from __future__ import annotations

import logging


def configure_logging(level: int = logging.INFO, node: str | None = None) -> None:
    """Timestamped records on stderr, unless this process already configured logging; in a Ray
    task, ``node`` (its Ray node id) tags every record with the node's first 8 characters."""
    where = f" [node {node[:8]}]" if node else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")
