"""Metanetworks: one module per model, one entry per model in :data:`MODEL_NAMES` / :func:`build_model`.

Adding a model: write ``pipeline/models/<name>.py`` with an ``nn.Module`` whose class attribute
``input_kind`` is ``"flat"`` (a ``(B, P)`` parameter vector) or ``"graph"`` (a PyG batch of
neural graphs), add its settings dataclass to :mod:`pipeline.config` and a branch below.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.models.probes import ForwardSpec

MODEL_NAMES = ("mlp", "ng_gnn", "ws_kan")
PERM_SUFFIX = "_perm"


def split_model_name(name: str) -> tuple[str, bool]:
    """``"mlp_perm"`` -> ``("mlp", True)``: a ``_perm`` suffix trains the base model with random
    hidden-neuron permutations of every training batch (settings from the base model's section)."""
    if name.endswith(PERM_SUFFIX):
        return name[: -len(PERM_SUFFIX)], True
    return name, False


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about its inputs and targets."""

    n_params: int
    node_dim: int
    edge_dim: int
    n_pos: int
    n_out: int
    n_classes: int  # outputs: classes, or regression targets
    avg_log_degree: float
    forward_spec: ForwardSpec | None = None


def build_model(name: str, cfg, shape: DataShape) -> nn.Module:
    """Instantiate model ``name`` with its settings section ``cfg`` (a dataclass)."""
    if name == "mlp":
        from pipeline.models.mlp import FlatMLP

        return FlatMLP(shape.n_params, shape.n_classes, cfg.hidden, cfg.layers, cfg.dropout)
    if name == "ng_gnn":
        from pipeline.models.ng_gnn import NGGNN

        return NGGNN(
            shape.node_dim,
            shape.edge_dim,
            shape.n_pos,
            shape.n_out,
            shape.n_classes,
            cfg.hidden,
            cfg.layers,
            cfg.dropout,
            cfg.fourier_features,
            cfg.fourier_scale,
            shape.avg_log_degree,
            cfg.probe_features,
            shape.forward_spec,
        )
    if name == "ws_kan":
        from pipeline.models.ws_kan import WSKAN

        s = shape
        return WSKAN(s.node_dim, s.edge_dim, s.n_pos, s.n_out, s.n_classes, cfg.hidden, cfg.layers, cfg.dropout)
    raise ValueError(f"unknown model {name!r}; known: {MODEL_NAMES}")
