"""Training throughput of every metanetwork on the default zoo, and NG-GNN against plain ``PNAConv``.

Times full training steps (forward, backward, AdamW; cross-entropy on the digit labels) on
random batches of the default zoo's training INRs (``data/graphs``, made by ``dvc repro``), in
this process, with the torch thread count of the machine (or ``--threads``). Every model gets
its input the way the training stage builds it: flat models a ``(B, P)`` slice of the
normalized parameter matrix, graph models one vectorized :meth:`GraphSet.batch` (no Python-side
graph rebuilding, no dense ``n x n`` edge tensors). The baseline is a plain stack of PyG
``PNAConv`` layers (aggregators mean/min/max/std, scalers identity/amplification, edge
features; same embeddings and readout) of NG-GNN's width and depth, measured in the same run
at every width in ``--widths``. Run: ``python benchmarks/metanet_throughput.py [--batch 128]``.
The last line is ``ratio NG-GNN / PNAConv at width W: N.NN`` for the last width.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch_geometric.nn import PNAConv
from torch_geometric.utils import degree

from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import read_json
from pipeline.models import build_model
from pipeline.models.deepsets import DeepSets
from pipeline.models.dwsnet import DWSNet
from pipeline.models.mlp import Settings as MLPConfig
from pipeline.models.nfn import NFN
from pipeline.models.ng_gnn import Settings as NGGNNConfig
from pipeline.models.ng_t import NGT
from pipeline.models.statnn import StatNN
from pipeline.train import data_shape, forward_spec_from_meta, model_inputs
from pipeline.weightspace.spec import ParamSpec

N_CLASSES = 10


class PNAStack(nn.Module):
    """Baseline: embeddings as NG-GNN's, ``layers`` x (PNAConv, LayerNorm, SiLU), output-node readout."""

    input_kind = "graph"

    def __init__(self, n_pos: int, hidden: int, layers: int, deg: torch.Tensor, n_classes: int = N_CLASSES):
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


def graphs_per_second(model: nn.Module, data, batch: int, steps: int) -> float:
    """Training steps per second x batch size (after two warm-up steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t = 0.0
    for k in range(steps + 2):
        idx = torch.randperm(len(data), generator=gen)[:batch]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(data.batch(idx)), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            t += time.perf_counter() - start
    return steps * batch / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--graphs", default="data/graphs")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64], help="NG-GNN / PNAConv widths compared")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gdir = Path(args.graphs)
    if not (gdir / "train.safetensors").exists():
        raise SystemExit(f"{gdir}/train.safetensors not found: run `dvc repro graphs` first")
    meta = read_json(gdir / "meta.json")
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    spec = template.spec
    train = GraphSet.load(gdir / "train.safetensors")
    shape = data_shape(train, template, N_CLASSES, forward_spec_from_meta(meta))
    flat = model_inputs(train, template, "flat")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; training steps on batches of {args.batch} "
        f"INRs ({spec.n_params} parameters, graphs of {template.n_nodes} nodes and {template.n_edges} edges)"
    )

    torch.manual_seed(0)
    models: list[tuple[str, nn.Module]] = [
        ("MLP (flat)", build_model("mlp", MLPConfig(), shape)),
        ("StatNN", StatNN(spec, N_CLASSES)),
        ("DeepSets", DeepSets(spec, N_CLASSES)),
        ("DWSNet", DWSNet(spec, N_CLASSES)),
        ("NFN (NP)", NFN(spec, N_CLASSES, mode="np")),
        ("NFN (HNP)", NFN(spec, N_CLASSES, mode="hnp")),
        ("NG-T", NGT(shape.node_dim, shape.edge_dim, shape.n_pos, shape.n_out, N_CLASSES, hidden=32)),
    ]
    print(f"{'model':>28}  {'graphs/s':>9}  parameters")
    for name, model in models:
        data = train if model.input_kind == "graph" else flat
        rate = graphs_per_second(model, data, args.batch, args.steps)
        print(f"{name:>28}  {rate:9.1f}  {sum(p.numel() for p in model.parameters()):,}")

    sample = train.batch(torch.arange(min(len(train), 512)))
    deg = torch.bincount(degree(sample.edge_index[1], sample.num_nodes, dtype=torch.long))
    ratios = {}
    for width in args.widths:
        rates = {}
        for name, model in (
            ("PNAConv stack", PNAStack(template.n_pos, width, 4, deg)),
            ("NG-GNN", build_model("ng_gnn", NGGNNConfig(hidden=width), shape)),
            ("NG-GNN, 16 probes", build_model("ng_gnn", NGGNNConfig(hidden=width, probe_features=16), shape)),
        ):
            rates[name] = graphs_per_second(model, train, args.batch, args.steps)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"{f'{name}, width {width}':>28}  {rates[name]:9.1f}  {n_params:,}")
        ratios[width] = rates["NG-GNN"] / rates["PNAConv stack"]
    for width, r in ratios.items():
        print(f"ratio NG-GNN / PNAConv at width {width}: {r:.2f}")


if __name__ == "__main__":
    main()
