"""NG-T on MLP neural graphs: invariance, wrong couplings, batch independence."""

from __future__ import annotations

import pytest
import torch

from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models.ng_t import NGT
from pipeline.weightspace.spec import mlp_spec, permute, random_permutations

LAYOUTS = {"mlp2-8-8-1": mlp_spec([2, 8, 8, 1]), "mlp2-5-4-3-1": mlp_spec([2, 5, 4, 3, 1])}
B = 3


def _setup(spec):
    g = torch.Generator().manual_seed(0)
    params = {t.name: torch.randn(B, *t.shape, generator=g) for t in spec.tensors}
    t = graph_template(spec)
    torch.manual_seed(0)
    model = NGT(t.node_dim, t.edge_dim, t.n_pos, spec.layer_sizes[-1], 3, hidden=16, layers=4, heads=4).eval()
    with torch.no_grad():  # a generic, non-contractive point of the model family
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(2.0)
    return params, t, model


def _out(model, params, t):
    gs = GraphSet.from_params(params, t, torch.zeros(B), torch.arange(B))
    with torch.no_grad():
        return model(gs.batch(torch.arange(B)))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_ngt_invariant_and_detects_wrong_couplings(name):
    spec = LAYOUTS[name]
    params, t, model = _setup(spec)
    ref = _out(model, params, t)
    scale = float(ref.abs().max())
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    torch.testing.assert_close(_out(model, permute(params, spec, perms), t), ref, rtol=1e-5, atol=1e-5 * scale)
    rows = dict(params)
    rows["layers.0.weight"] = params["layers.0.weight"].flip(1)
    assert float((_out(model, rows, t) - ref).abs().max()) > 1e-3 * scale
    inputs = dict(params)
    inputs["layers.0.weight"] = params["layers.0.weight"].flip(2)
    assert float((_out(model, inputs, t) - ref).abs().max()) > 1e-3 * scale


def test_ngt_graphs_do_not_leak_into_each_other():
    spec = LAYOUTS["mlp2-5-4-3-1"]
    params, t, model = _setup(spec)
    gs = GraphSet.from_params(params, t, torch.zeros(B), torch.arange(B))
    with torch.no_grad():
        full = model(gs.batch(torch.arange(B)))
        single = model(gs.batch(torch.tensor([2])))
    torch.testing.assert_close(single, full[2:3], rtol=1e-5, atol=1e-6)


def test_all_pairs_attention_reaches_every_node_in_one_layer_and_keeps_graphs_apart():
    """With ``attention="all_pairs"`` (the reference code) an input neuron's state after one layer
    depends on the output neuron's bias (not a neighbour); along the edges it cannot. Graphs of a
    batch stay independent."""
    from pipeline.models.ng_t import NGTEncoder

    spec = LAYOUTS["mlp2-5-4-3-1"]
    params, t, _ = _setup(spec)
    moved = dict(params)
    moved["layers.3.bias"] = params["layers.3.bias"] + 1.0
    first_input = torch.arange(B) * t.n_nodes  # node 0 of every graph: an input neuron

    def input_states(attention, p, idx=None):
        torch.manual_seed(0)
        enc = NGTEncoder(t.node_dim, t.edge_dim, t.n_pos, hidden=16, layers=1, heads=4, attention=attention).eval()
        gs = GraphSet.from_params(p, t, torch.zeros(B), torch.arange(B))
        with torch.no_grad():
            return enc(gs.batch(torch.arange(B) if idx is None else idx)).x

    for attention, reaches in (("edges", False), ("all_pairs", True)):
        a, b = input_states(attention, params)[first_input], input_states(attention, moved)[first_input]
        assert bool((a - b).abs().max() > 1e-4) is reaches, attention
    full = input_states("all_pairs", params)
    single = input_states("all_pairs", params, torch.tensor([2]))
    torch.testing.assert_close(single, full[2 * t.n_nodes : 3 * t.n_nodes], rtol=1e-5, atol=1e-6)
