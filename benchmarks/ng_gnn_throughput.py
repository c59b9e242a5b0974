"""NG-GNN training throughput against a plain stack of PyG ``PNAConv`` layers.

Times full training steps (forward, backward, AdamW) on batches of the default zoo's training
graphs (``data/graphs``, made by ``dvc repro``), in this process, for NG-GNN without and with
probe features and for a baseline of the same width and depth: four ``PNAConv`` layers
(aggregators mean/min/max/std, scalers identity/amplification, edge features) with the same
input embedding and readout. Run: ``python benchmarks/ng_gnn_throughput.py [--batch 32]``.
The last line is ``ratio: N.NN`` (NG-GNN without probes over PNAConv, graphs per second).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch_geometric.nn import PNAConv
from torch_geometric.utils import degree

from pipeline.config import NGGNNConfig
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import read_json
from pipeline.models import build_model
from pipeline.train import data_shape, forward_spec_from_meta
from pipeline.weightspace.spec import ParamSpec


class PNAStack(nn.Module):
    """Baseline: embeddings as NG-GNN's, ``layers`` x (PNAConv, LayerNorm, SiLU), output-node readout."""

    input_kind = "graph"

    def __init__(self, n_pos: int, hidden: int, layers: int, deg: torch.Tensor, n_classes: int = 10):
        super().__init__()
        self.node_in = nn.Linear(1, hidden)
        self.edge_in = nn.Linear(1, hidden)
        self.pos = nn.Embedding(n_pos, hidden)
        self.convs = nn.ModuleList(
            PNAConv(
                hidden,
                hidden,
                ["mean", "min", "max", "std"],
                ["identity", "amplification"],
                deg,
                edge_dim=hidden,
                towers=1,
                pre_layers=1,
                post_layers=1,
            )
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_classes))

    def forward(self, batch):
        x = self.node_in(batch.x) + self.pos(batch.node_pos)
        e = self.edge_in(batch.edge_attr)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = x + nn.functional.silu(norm(conv(x, batch.edge_index, e)))
        return self.head(x[batch.node_out])


def graphs_per_second(model: nn.Module, graphs: GraphSet, batch: int, steps: int) -> float:
    """Training steps per second x batch size (after two warm-up steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t = 0.0
    for k in range(steps + 2):
        idx = torch.randperm(len(graphs), generator=gen)[:batch]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(graphs.batch(idx)), graphs.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            t += time.perf_counter() - start
    return steps * batch / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--graphs", default="data/graphs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=32)
    args = ap.parse_args()
    gdir = Path(args.graphs)
    if not (gdir / "train.safetensors").exists():
        raise SystemExit(f"{gdir}/train.safetensors not found: run `dvc repro graphs` first")
    meta = read_json(gdir / "meta.json")
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    train = GraphSet.load(gdir / "train.safetensors")
    shape = data_shape(train, template, 10, forward_spec_from_meta(meta))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batches of {args.batch} INR graphs "
        f"({template.n_nodes} nodes, {template.n_edges} edges each), width {args.hidden}, 4 layers"
    )

    torch.manual_seed(0)
    sample = train.batch(torch.arange(min(len(train), 512)))
    deg = torch.bincount(degree(sample.edge_index[1], sample.num_nodes, dtype=torch.long))
    rates = {}
    for name, model in (
        ("PNAConv stack", PNAStack(template.n_pos, args.hidden, 4, deg)),
        ("NG-GNN", build_model("ng_gnn", NGGNNConfig(hidden=args.hidden), shape)),
        ("NG-GNN, 16 probes", build_model("ng_gnn", NGGNNConfig(hidden=args.hidden, probe_features=16), shape)),
    ):
        n_params = sum(p.numel() for p in model.parameters())
        rates[name] = graphs_per_second(model, train, args.batch, args.steps)
        print(f"{name:>18}: {rates[name]:7.1f} graphs/s ({n_params:,} parameters)")
    print(f"ratio: {rates['NG-GNN'] / rates['PNAConv stack']:.2f}")


if __name__ == "__main__":
    main()
