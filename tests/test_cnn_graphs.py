"""Neural graphs of CNNs: kernel slots, residual edges, one format across architectures, and the
graph models' symmetry on them both ways."""

import pytest
import torch

from pipeline.graphs.cnn_graphs import ACTIVATION_CODES, cnn_graph_set
from pipeline.graphs.neural_graph import features_to_params, graph_template, params_to_features
from pipeline.graphs.store import GraphSet
from pipeline.models.ng_gnn import NGGNN
from pipeline.models.ng_t import NGT
from pipeline.weightspace.spec import permute, random_permutations
from pipeline.zoo.cnn import CNNArch, cnn_spec, init_cnns, small_cnn_zoo_arch

RESIDUAL = CNNArch((8, 8, 16, 8), (3, 5, 7, 3), (2, 1, 2, 1), "gelu", ((1, 2), (2, 4)))
SMALL = CNNArch((4, 4), (3, 7), (2, 1), "tanh", ((1, 2),))


def test_a_3x3_kernel_lands_at_the_centre_of_a_7x7_slot_and_the_head_is_1x1():
    spec = cnn_spec(SMALL)
    t = graph_template(spec)
    assert t.edge_dim == 49
    params = init_cnns(SMALL, [0])
    x, e = params_to_features(params, t)
    first = e[0, t.edge_layer == 0].view(-1, 7, 7)  # conv.0: 1 -> 4 channels, 3x3
    w = params["conv.0.weight"][0]  # (4, 1, 3, 3)
    torch.testing.assert_close(first[:, 2:5, 2:5], w.reshape(4, 3, 3))
    assert float(first.abs().sum()) == pytest.approx(float(w.abs().sum()))  # nothing outside the centre
    second = e[0, t.edge_layer == 1].view(4, 4, 7, 7)  # conv.1: a full 7x7 kernel, edges (dst, src)
    torch.testing.assert_close(second, params["conv.1.weight"][0])
    head = e[0, t.edge_layer == 2].view(10, 4, 49)
    torch.testing.assert_close(head[..., 24], params["head.weight"][0])
    assert float(head.abs().sum()) == pytest.approx(float(params["head.weight"].abs().sum()))
    back = features_to_params(x, e, t)
    for name in spec.names:
        torch.testing.assert_close(back[name], params[name])


def test_a_residual_connection_appears_as_identity_edges():
    spec = cnn_spec(RESIDUAL)
    t = graph_template(spec)
    res = t.edge_layer == spec.n_layers
    assert int(res.sum()) == 8 + 8  # (1, 2) and (2, 4): 8 channels each
    src, dst = t.edge_index[:, res]
    assert torch.equal(t.node_layer[src], torch.tensor([1] * 8 + [2] * 8))
    assert torch.equal(t.node_layer[dst], torch.tensor([2] * 8 + [4] * 8))
    offsets = torch.tensor([0, 1, 9, 17, 33])
    assert torch.equal(src - offsets[t.node_layer[src]], dst - offsets[t.node_layer[dst]])  # channel i -> i
    _, e = params_to_features(init_cnns(RESIDUAL, [1, 2]), t)
    expected = torch.zeros(16, 49)
    expected[:, 24] = 1.0
    assert torch.equal(e[:, -16:], expected.expand(2, -1, -1))  # written as constants, not computed


def test_architectures_of_a_zoo_share_widths_and_output_positions():
    archs = [small_cnn_zoo_arch(), RESIDUAL, SMALL]
    sets = [
        cnn_graph_set(init_cnns(a, [k, k + 10]), a, torch.zeros(2), torch.tensor([2 * k, 2 * k + 1]), 7, 4)
        for k, a in enumerate(archs)
    ]
    graphs = GraphSet.concat(sets)
    assert len(graphs) == 6 and graphs.uniform_sizes is None
    assert graphs.x.shape[1] == 1 + len(ACTIVATION_CODES) and graphs.edge_attr.shape[1] == 49
    out_pos = graphs.node_pos[graphs.node_out].view(6, 10)
    assert torch.equal(out_pos, (torch.arange(10) + 1 + 4).expand(6, -1))  # 1 input channel, 4 hidden slots
    b = graphs.batch(torch.tensor([5, 0, 3]))
    assert b.num_graphs == 3 and int(b.edge_index.max()) < b.x.shape[0]
    # activation codes on hidden nodes only
    hidden = (graphs.node_layer > 0) & ~graphs.node_out
    assert torch.equal(graphs.x[hidden, 1:].sum(1), torch.ones(int(hidden.sum())))  # one-hot: 1 + zeros is exact
    assert float(graphs.x[~hidden, 1:].abs().sum()) == 0.0  # codes never written there: structurally zero
    with pytest.raises(ValueError, match="kernel_slot"):
        graph_template(cnn_spec(RESIDUAL), kernel_slot=5)


def _graph_models(graphs: GraphSet):
    """NG-GNN and NG-T deep enough that the first conv's edges reach the output nodes (a layer
    moves information one hop; the residual CNN has 5 parameter layers)."""
    torch.manual_seed(0)
    node_dim, edge_dim, n_pos = graphs.x.shape[1], graphs.edge_attr.shape[1], int(graphs.node_pos.max()) + 1
    return [
        NGGNN(node_dim, edge_dim, n_pos, 10, 3, hidden=16, layers=5).eval(),
        NGT(node_dim, edge_dim, n_pos, 10, 3, hidden=16, layers=5, heads=4).eval(),
    ]


@pytest.mark.parametrize("arch", [small_cnn_zoo_arch(), RESIDUAL], ids=["homogeneous", "residual"])
def test_graph_models_are_invariant_to_channel_permutations_and_see_wrong_ones(arch):
    spec = cnn_spec(arch)
    params = {k: v.double() for k, v in init_cnns(arch, [3, 4, 5], [2.0, 2.0, 2.0]).items()}
    perms = random_permutations(spec, 3, torch.Generator().manual_seed(0))
    idx = torch.arange(3)

    def graphs(p):
        return cnn_graph_set(p, arch, torch.zeros(3), idx, 7, 4)

    # the last conv's output channels alone (not its bias, not the head's inputs)
    last = f"conv.{arch.n_conv - 1}.weight"
    wrong = dict(params, **{last: params[last][:, torch.randperm(arch.channels[-1])]})
    if arch.residual:
        wrong = permute(params, spec, dict(perms) | {2: torch.roll(perms[2], 1, dims=1)})  # residual partners apart
    base = graphs(params)
    for model in _graph_models(base):
        model.double()
        with torch.no_grad():
            out = model(base.batch(idx))
            # how much the output moves between nets: the scale of a detectable change (float64
            # keeps the permutation error ~1e-15)
            spread = float((out - out.mean(0)).abs().max())
            assert spread > 1e-9
            permuted = model(graphs(permute(params, spec, perms)).batch(idx))
            torch.testing.assert_close(permuted, out, rtol=1e-6, atol=1e-6 * spread)
            assert (model(graphs(wrong).batch(idx)) - out).abs().max() > 1e-5 * spread  # as the registry tests


@pytest.mark.parametrize("name", ["nfn-np", "nfn-hnp", "dwsnet", "statnn"])
def test_weight_space_models_read_the_homogeneous_cnn_zoo_invariantly(name):
    """NFN, DWSNet and StatNN take a CNN spec as they are (kernel axes are feature axes):
    invariant to channel permutations; all but StatNN (per-tensor statistics) see a wrong one."""
    from pipeline.models import dwsnet, nfn, statnn
    from pipeline.weightspace.spec import flatten

    arch = small_cnn_zoo_arch()
    spec = cnn_spec(arch)
    torch.manual_seed(0)
    model = (
        {
            "nfn-np": lambda: nfn.NFN(spec, 1, hidden=8, layers=2, mode="np"),
            "nfn-hnp": lambda: nfn.NFN(spec, 1, hidden=8, layers=2, mode="hnp"),
            "dwsnet": lambda: dwsnet.DWSNet(spec, 1, hidden=8, layers=2),
            "statnn": lambda: statnn.StatNN(spec, 1, hidden=32, layers=2),
        }[name]()
        .double()
        .eval()
    )
    params = {k: v.double() for k, v in init_cnns(arch, [1, 2, 3], [2.0] * 3).items()}
    perms = random_permutations(spec, 3, torch.Generator().manual_seed(0))
    wrong = dict(params, **{"conv.2.weight": params["conv.2.weight"][:, torch.randperm(16)]})
    with torch.no_grad():
        out = model(flatten(params, spec))
        spread = float((out - out.mean(0)).abs().max())
        assert spread > 1e-9
        torch.testing.assert_close(
            model(flatten(permute(params, spec, perms), spec)), out, rtol=1e-6, atol=1e-6 * spread
        )
        changed = float((model(flatten(wrong, spec)) - out).abs().max())
    # StatNN's statistics ignore the entries' order, but its float sums add them in another order:
    # "unchanged" up to rounding (~1e-17 here), relative to the output's scale as the check above
    assert changed <= 1e-6 * spread if name == "statnn" else changed > 1e-5 * spread


def test_segment_statistics_match_tensor_statistics_per_group():
    from pipeline.models.statnn import QUANTILES, segment_statistics, tensor_statistics

    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, generator=g, dtype=torch.float64) for n in (1, 7, 30)]
    values = torch.cat(rows)
    group = torch.cat([torch.full((len(r),), k) for k, r in zip((3, 0, 1), rows, strict=True)])  # group 2 empty
    out = segment_statistics(values, group, 4, torch.tensor(QUANTILES, dtype=torch.float64))
    for k, r in zip((3, 0, 1), rows, strict=True):
        torch.testing.assert_close(out[k], tensor_statistics(r.unsqueeze(0))[0])
    assert float(out[2].abs().sum()) == 0.0  # an empty group is zeroed by torch.where, not summed


def test_graph_statnn_reads_any_architecture_by_layer_slot():
    """StatNN on graphs of several architectures: a 3x3 kernel's statistics leave out its 7x7
    slot's padding (equal to the raw tensor's), the head fills the last slot, channel
    permutations leave the output unchanged (as for any statistic: a wrong coupling does too),
    and rescaling one layer's weights changes it."""
    from pipeline.models.statnn import N_STATS, GraphStatNN, tensor_statistics

    archs = [SMALL, RESIDUAL]
    params = [{k: v.double() for k, v in init_cnns(a, [1, 2], [2.0, 2.0]).items()} for a in archs]

    def graphs(ps):
        sets = [cnn_graph_set(p, a, torch.zeros(2), torch.arange(2), 7, 4) for a, p in zip(archs, ps, strict=True)]
        return GraphSet.concat(sets)

    idx = torch.arange(4)
    torch.manual_seed(0)
    model = GraphStatNN(5, 1, hidden=16, layers=2).double().eval()
    model.norm.running_var.fill_(1.0)
    with torch.no_grad():
        base = graphs(params)
        feats = model.features(base.batch(idx)).view(4, 5, 2 * N_STATS + 1)
        # SMALL: conv.0 (3x3) in slot 0, conv.1 (7x7) in slot 1, the head in slot 4; slots 2-3 absent
        torch.testing.assert_close(feats[0, 0, :N_STATS], tensor_statistics(params[0]["conv.0.weight"][:1])[0])
        torch.testing.assert_close(feats[0, 4, :N_STATS], tensor_statistics(params[0]["head.weight"][:1])[0])
        torch.testing.assert_close(feats[0, 4, N_STATS:-1], tensor_statistics(params[0]["head.bias"][:1])[0])
        assert feats[0, :, -1].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]  # presence flags: written, not summed
        assert feats[2, :, -1].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]  # RESIDUAL: 4 convs + head
        out = model(base.batch(idx))
        spread = float((out - out.mean(0)).abs().max())
        assert spread > 1e-9
        perms = [random_permutations(cnn_spec(a), 2, torch.Generator().manual_seed(k)) for k, a in enumerate(archs)]
        permuted = [permute(p, cnn_spec(a), q) for p, a, q in zip(params, archs, perms, strict=True)]
        torch.testing.assert_close(model(graphs(permuted).batch(idx)), out, rtol=1e-6, atol=1e-6 * spread)
        scaled = [dict(p, **{"conv.0.weight": p["conv.0.weight"] * 1.5}) for p in params]
        assert float((model(graphs(scaled).batch(idx)) - out).abs().max()) > 1e-3 * spread
