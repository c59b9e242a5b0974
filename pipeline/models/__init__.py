"""Metanetworks. Each model lives in its own module and is registered in :data:`REGISTRY`."""

MODEL_NAMES = ("mlp", "ng_gnn")
