"""Neural graphs: structure, lossless conversion to and from weights, collation, storage."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torch_geometric.data import Batch

from pipeline.graphs.neural_graph import features_to_params, graph_template, params_to_features
from pipeline.graphs.store import GraphSet
from pipeline.weightspace.normalize import apply_stats, fit_stats, invert_stats
from pipeline.weightspace.spec import Params, ParamSpec, permute, random_permutations
from pipeline.zoo.siren import siren_spec
from tests.conftest import LAYOUT_IDS, LAYOUTS, siren_params


def _graphset(params: Params, spec: ParamSpec) -> GraphSet:
    n = next(iter(params.values())).shape[0]
    y = torch.arange(n) % 10
    return GraphSet.from_params(params, graph_template(spec), y, torch.arange(n) + 1000)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_features_round_trip_is_exact(hidden):
    spec, params = siren_params(hidden, range(100, 104))
    template = graph_template(spec)
    x, e = params_to_features(params, template)
    assert x.shape == (4, template.n_nodes, template.node_dim)
    assert e.shape == (4, template.n_edges, template.edge_dim)
    back = features_to_params(x, e, template)
    assert list(back) == list(spec.names)
    for k in spec.names:
        assert back[k].shape == params[k].shape, k
        assert torch.equal(back[k], params[k]), k


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graphset_to_params_round_trip(hidden):
    spec, params = siren_params(hidden, range(100, 104))
    template = graph_template(spec)
    gs = _graphset(params, spec)
    assert len(gs) == 4
    back = gs.to_params(template)
    for k in spec.names:
        assert torch.equal(back[k], params[k]), k


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graphset_save_load_round_trip(hidden, tmp_path):
    spec, params = siren_params(hidden, range(100, 104))
    gs = _graphset(params, spec)
    path = tmp_path / "split.safetensors"
    gs.save(path)
    loaded = GraphSet.load(path)
    for name in (
        "x",
        "edge_attr",
        "edge_index",
        "node_ptr",
        "edge_ptr",
        "node_layer",
        "node_pos",
        "edge_layer",
        "node_out",
        "y",
        "net_id",
    ):
        a, b = getattr(gs, name), getattr(loaded, name)
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    assert loaded.node_out.dtype == torch.bool
    back = loaded.to_params(graph_template(spec))
    for k in spec.names:
        assert torch.equal(back[k], params[k]), k
    # no temporary files are left beside the split
    assert [p.name for p in tmp_path.iterdir()] == ["split.safetensors"]


def _assert_same_set(a: GraphSet, b: GraphSet) -> None:
    for f in dataclasses.fields(GraphSet):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and torch.equal(x, y) and y.is_contiguous(), f.name
    assert a.uniform_sizes == b.uniform_sizes


def _pickled_bytes(obj) -> int:
    return len(pickle.dumps(obj, protocol=5))


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_a_pickled_set_of_one_template_holds_its_structure_once(hidden):
    """What Ray puts in its object store: the structure (edge_index, layers, positions, outputs)
    once, not once per graph; unpickled, the same tensors bit for bit."""
    spec, params = siren_params(hidden, range(100, 164))
    gs = _graphset(params, spec)
    assert gs.shared_structure() is not None
    back = pickle.loads(pickle.dumps(gs, protocol=5))
    _assert_same_set(gs, back)
    per_graph = _pickled_bytes(dict(gs.__dict__))  # every tensor as it is: the structure G times
    assert _pickled_bytes(gs) < 0.5 * per_graph


def test_sets_whose_graphs_differ_in_structure_pickle_whole():
    """Same sizes but another edge order in one graph, or two architectures: nothing is shared,
    and the round trip is still exact (the negative control of the test above)."""
    spec, params = siren_params([4, 4], range(100, 108))
    gs = _graphset(params, spec)
    N, E = gs.uniform_sizes
    gs.edge_index[:, E : 2 * E] = gs.edge_index[:, E : 2 * E].flip(-1)  # graph 1: its edges listed backwards
    assert gs.shared_structure() is None
    _assert_same_set(gs, pickle.loads(pickle.dumps(gs, protocol=5)))
    assert _pickled_bytes(gs) >= _pickled_bytes(dict(gs.__dict__))
    spec2, params2 = siren_params([6], range(200, 204))
    mixed = GraphSet.concat([_graphset(params, spec), _graphset(params2, spec2)])
    assert mixed.uniform_sizes is None and mixed.shared_structure() is None
    _assert_same_set(mixed, pickle.loads(pickle.dumps(mixed, protocol=5)))


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graph_node_and_edge_counts(hidden):
    spec = siren_spec(hidden)
    t = graph_template(spec)
    sizes = spec.layer_sizes
    assert t.n_nodes == sum(sizes)
    assert t.n_edges == sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert t.edge_index.shape == (2, t.n_edges)
    assert t.node_dim == 1 and t.edge_dim == 1  # an MLP: one bias per node, one weight per edge
    # every neuron layer is a contiguous block of nodes
    expected_layer = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    assert torch.equal(t.node_layer, expected_layer)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graph_edges_connect_neighbouring_layers_completely(hidden):
    spec = siren_spec(hidden)
    t = graph_template(spec)
    src, dst = t.edge_index
    assert torch.equal(t.node_layer[dst], t.node_layer[src] + 1)
    assert torch.equal(t.edge_layer, t.node_layer[src])
    # no duplicate edges, so with the right count the bipartite layers are complete
    keys = src * t.n_nodes + dst
    assert keys.unique().numel() == t.n_edges
    # destination-major: the in-edges of every node are contiguous
    assert bool((dst[1:] >= dst[:-1]).all())


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graph_features_are_weights_and_biases(hidden):
    spec, params = siren_params(hidden, range(100, 100 + 2))
    t = graph_template(spec)
    x, e = params_to_features(params, t)
    sizes = spec.layer_sizes
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    src, dst = t.edge_index
    lay = t.edge_layer
    i = src - torch.tensor(offsets)[lay]
    j = dst - torch.tensor(offsets)[lay + 1]
    for b in range(2):
        expected_e = torch.empty(t.n_edges)
        for k in range(spec.n_layers):
            m = lay == k
            # edge (i in layer k) -> (j in layer k+1) carries W_k[j, i]
            expected_e[m] = params[f"layers.{k}.weight"][b][j[m], i[m]]
        assert torch.equal(e[b, :, 0], expected_e)
        # input nodes: 0; hidden/output node j of layer k: bias b_{k-1}[j]
        assert torch.equal(x[b, : sizes[0], 0], torch.zeros(sizes[0]))
        for k in range(1, len(sizes)):
            block = x[b, offsets[k] : offsets[k] + sizes[k], 0]
            assert torch.equal(block, params[f"layers.{k - 1}.bias"][b]), (b, k)
    # spot-check one edge by hand: layer 1, source neuron 3 -> destination neuron 5
    k, si, dj = 1, 3, 5
    hit = ((src == offsets[k] + si) & (dst == offsets[k + 1] + dj)).nonzero().flatten()
    assert hit.numel() == 1
    assert e[1, hit[0], 0] == params["layers.1.weight"][1, dj, si]


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_positional_ids(hidden):
    spec = siren_spec(hidden)
    t = graph_template(spec)
    sizes = spec.layer_sizes
    L = spec.n_layers
    assert t.n_pos == sizes[0] + (L - 1) + sizes[-1]
    pos_by_layer = [t.node_pos[t.node_layer == k] for k in range(L + 1)]
    # one id per input neuron and per output neuron
    assert pos_by_layer[0].unique().numel() == sizes[0]
    assert pos_by_layer[L].unique().numel() == sizes[-1]
    # one id shared within each hidden layer, different across hidden layers
    hidden_ids = []
    for k in spec.hidden_layers:
        assert pos_by_layer[k].unique().numel() == 1, k
        hidden_ids.append(int(pos_by_layer[k][0]))
    assert len(set(hidden_ids)) == L - 1
    # ids of different groups never collide and together cover 0..n_pos-1 exactly
    all_ids = torch.cat([pos_by_layer[0], torch.tensor(hidden_ids), pos_by_layer[L]])
    assert all_ids.unique().numel() == t.n_pos
    assert torch.equal(all_ids.sort().values, torch.arange(t.n_pos))


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graph_of_permuted_net_is_isomorphic(hidden):
    """Permuting hidden neurons = relabelling graph nodes: same multiset of (pos, bias), same
    multiset of (src pos, dst pos, weight) edges."""
    spec, params = siren_params(hidden, range(100, 100 + 2))
    t = graph_template(spec)
    perms = random_permutations(spec, 2, torch.Generator().manual_seed(4))
    x, e = params_to_features(params, t)
    xp, ep = params_to_features(permute(params, spec, perms), t)
    assert not torch.equal(e, ep)
    src, dst = t.edge_index
    for b in range(2):

        def canon_nodes(feat, b=b):
            rows = torch.stack([t.node_pos.double(), feat[b, :, 0].double()], 1)
            return rows[torch.argsort(rows[:, 1] + 1e3 * rows[:, 0])]

        def canon_edges(feat, b=b):
            rows = torch.stack([t.node_pos[src].double(), t.node_pos[dst].double(), feat[b, :, 0].double()], 1)
            return rows[torch.argsort(rows[:, 2] + 1e3 * rows[:, 1] + 1e5 * rows[:, 0])]

        assert torch.equal(canon_nodes(x), canon_nodes(xp))
        assert torch.equal(canon_edges(e), canon_edges(ep))


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_batch_matches_pyg_from_data_list(hidden):
    spec, params = siren_params(hidden, range(100, 100 + 6))
    gs = _graphset(params, spec)
    idx = torch.randperm(6)[:5]
    assert not torch.equal(idx, torch.arange(5))
    ours = gs.batch(idx)
    ref = Batch.from_data_list([gs.get(int(i)) for i in idx])
    for name in (
        "x",
        "edge_index",
        "edge_attr",
        "batch",
        "ptr",
        "node_pos",
        "node_layer",
        "edge_layer",
        "node_out",
        "y",
    ):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert ours.num_graphs == ref.num_graphs == 5
    # and every graph of the batch is the one asked for, in the order asked
    n = graph_template(spec).n_nodes
    for pos, i in enumerate(idx.tolist()):
        assert torch.equal(ours.x[pos * n : (pos + 1) * n], gs.x[i * n : (i + 1) * n])
    assert torch.equal(ours.y, gs.y[idx])


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_get_returns_single_graph(hidden):
    spec, params = siren_params(hidden, range(100, 100 + 3))
    t = graph_template(spec)
    gs = _graphset(params, spec)
    g = gs.get(2)
    assert g.num_nodes == t.n_nodes
    assert torch.equal(g.edge_index, t.edge_index)
    x, e = params_to_features({k: v[2:3] for k, v in params.items()}, t)
    assert torch.equal(g.x, x[0])
    assert torch.equal(g.edge_attr, e[0])
    assert torch.equal(g.node_out, t.node_layer == spec.n_layers)
    assert g.y.tolist() == [2]


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_normalization_standardizes_each_tensor_and_inverts(hidden):
    spec, params = siren_params(hidden, range(100, 100 + 8))
    stats = fit_stats(params, spec)
    assert set(stats) == set(spec.names)
    normed = apply_stats(params, spec, stats)
    hidden = set(spec.hidden_layers)
    for t in spec.tensors:
        k = t.name
        v = normed[k].double()
        assert v.shape == params[k].shape
        if hidden & set(t.neuron_layers):
            # SIRENs are sign symmetric: mean fixed at 0 by symmetry, unit root mean square
            assert stats[k][0] == 0.0, k  # fixed at 0 by fit_stats, not estimated
            assert abs(float(v.square().mean().sqrt()) - 1.0) < 1e-4, k
        else:
            assert abs(float(v.mean())) < 1e-5, k
            assert abs(float(v.std(correction=0)) - 1.0) < 1e-4, k
    restored = invert_stats(normed, spec, stats)
    for k in spec.names:
        torch.testing.assert_close(restored[k], params[k], rtol=1e-5, atol=1e-6)
    # held-out nets are normalized with the training statistics, not their own
    _, other = siren_params(hidden, range(500, 500 + 3))
    other_normed = apply_stats(other, spec, stats)
    k = "layers.0.weight"
    mean, std = stats[k]
    torch.testing.assert_close(other_normed[k], (other[k] - mean) / std)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_normalization_commutes_with_hidden_permutations(hidden):
    """Per-tensor (not per-neuron) statistics keep the symmetry."""
    spec, params = siren_params(hidden, range(100, 100 + 5))
    perms = random_permutations(spec, 5, torch.Generator().manual_seed(8))
    permuted = permute(params, spec, perms)
    stats = fit_stats(params, spec)
    stats_p = fit_stats(permuted, spec)
    for k in spec.names:
        assert stats[k] == pytest.approx(stats_p[k], rel=1e-9, abs=1e-12), k
    a = permute(apply_stats(params, spec, stats), spec, perms)
    b = apply_stats(permuted, spec, stats)
    for k in spec.names:
        assert torch.equal(a[k], b[k]), k  # the same stats, entry-wise (p - mean) / std: moving entries commutes
