"""Learning to optimize in the library: preprocessing, every learned optimizer's equivariance
(both ways) on MLP and CNN optimizees, permutation-equivariant optimization, the Adam baseline
against torch.optim.Adam, and truncation."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.tasks.l2o import (
    MOMENTA,
    N_FEATURES,
    FFOptimizer,
    GraphOptimizer,
    OptState,
    Task,
    baseline_steps,
    feature_graphs,
    fresh_state,
    graph_to_parameters,
    held_out_accuracy,
    make_task,
    optimize,
    optimizee_graph,
    optimizer_features,
    preprocess,
    unroll,
)
from pipeline.weightspace.spec import flatten, mlp_spec, permute, random_permutations, unflatten
from tests.weightspace_cases import random_params, rows_only

SPEC = mlp_spec([6, 5, 4, 3])
B = 3


def _task(n: int = 40) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(3, (n,), generator=g)
    return Task(SPEC, x, y, x[:10], y[:10], batch_size=8)


def _features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, SPEC.n_params, N_FEATURES, generator=g)


def _optimizers():
    torch.manual_seed(0)
    return {
        "ff": FFOptimizer(16),
        "ng_gnn": GraphOptimizer(SPEC.n_layers, "ng_gnn", hidden=8, layers=3),
        "ng_t": GraphOptimizer(SPEC.n_layers, "ng_t", hidden=8, layers=3),
    }


def _permute_features(f: torch.Tensor, perms) -> torch.Tensor:
    """Per-parameter channels permuted as the parameters are (channel by channel)."""
    chans = [flatten(permute(unflatten(f[..., c], SPEC), SPEC, perms), SPEC) for c in range(f.shape[-1])]
    return torch.stack(chans, -1)


def test_preprocessing_is_log_and_sign_above_the_threshold_and_linear_below():
    x = torch.tensor([2.0, -0.5, 1e-6, -1e-6, 0.0])
    out = preprocess(x)
    assert out[0].tolist() == pytest.approx([math.log(2.0) / 10, 1.0])
    assert out[1].tolist() == pytest.approx([math.log(0.5) / 10, -1.0])
    assert out[2].tolist() == pytest.approx([-1.0, 1e-6 * math.exp(10)])
    assert out[4].tolist() == [-1.0, 0.0]
    f = optimizer_features(torch.ones(B, SPEC.n_params), torch.zeros(B, SPEC.n_params, len(MOMENTA)))
    assert f.shape == (B, SPEC.n_params, N_FEATURES)


def test_feature_graphs_round_trip_every_channel_and_match_the_neural_graph():
    from pipeline.graphs.neural_graph import params_to_features

    graph = optimizee_graph(SPEC)
    t = graph.template
    f = _features()
    g = feature_graphs(f, graph)
    assert g.x.shape == (B * t.n_nodes, N_FEATURES) and g.edge_attr.shape == (B * t.n_edges, N_FEATURES)
    back = graph_to_parameters(g.x.view(B, t.n_nodes, -1), g.edge_attr.view(B, t.n_edges, -1), graph)
    assert torch.equal(back, f)
    for c in (0, N_FEATURES - 1):  # channel c is the neural graph of the parameters' c-th feature
        x, e = params_to_features(unflatten(f[..., c], SPEC), t)
        assert torch.equal(g.x.view(B, t.n_nodes, -1)[..., c : c + 1], x)
        assert torch.equal(g.edge_attr.view(B, t.n_edges, -1)[..., c : c + 1], e)


@pytest.mark.parametrize("kind", ["ff", "ng_gnn", "ng_t"])
def test_every_learned_optimizer_is_equivariant_and_sees_wrong_couplings(kind):
    opt = _optimizers()[kind].eval()
    f = _features()
    perms = random_permutations(SPEC, B, torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = optimizee_graph(SPEC)
        out = opt(f, t)
        got = opt(_permute_features(f, perms), t)
        expected = flatten(permute(unflatten(out, SPEC), SPEC, perms), SPEC)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if kind == "ff":  # per parameter: any reordering commutes, so only the graph models can tell
            return
        for layer in SPEC.hidden_layers:  # permute a layer's incoming rows but not its outgoing columns
            wrong_in = torch.stack(
                [flatten(rows_only(unflatten(f[..., c], SPEC), layer), SPEC) for c in range(N_FEATURES)], -1
            )
            wrong_out = flatten(rows_only(unflatten(out, SPEC), layer), SPEC)
            assert float((opt(wrong_in, t) - wrong_out).abs().max()) > 1e-5, layer


@pytest.mark.parametrize("kind", ["ng_gnn", "ng_t"])
def test_optimizing_from_a_permuted_net_gives_the_same_losses(kind):
    opt = _optimizers()[kind].eval()
    task = _task()
    params = random_params(SPEC, B)
    perms = random_permutations(SPEC, B, torch.Generator().manual_seed(2))
    runs = []
    for p in (params, permute(params, SPEC, perms)):
        gens = [torch.Generator().manual_seed(10 + b) for b in range(B)]
        state = OptState(flatten(p, SPEC), torch.zeros(B, SPEC.n_params, len(MOMENTA)))
        runs.append(unroll(opt, state, task, 4, gens, scale=0.05))
    (s0, l0), (s1, l1) = runs
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    assert float((l0[-1] - l0[0]).detach().abs().max()) > 1e-4  # the optimizer moved the nets
    expected = flatten(permute(unflatten(s0.flat.detach(), SPEC), SPEC, perms), SPEC)
    torch.testing.assert_close(s1.flat.detach(), expected, rtol=1e-4, atol=1e-5)


def test_the_adam_baseline_is_torch_adam_and_sgd_is_torch_sgd():
    task = _task()
    flat = flatten(random_params(SPEC, 1), SPEC)
    for method, make in (
        ("adam", lambda p: torch.optim.Adam(p, lr=1e-2)),
        ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)),
    ):
        ours, losses = baseline_steps(flat, task, 5, 1e-2, [torch.Generator().manual_seed(3)], method)
        theta = flat[0].clone().requires_grad_(True)
        torch_opt, g = make([theta]), torch.Generator().manual_seed(3)
        for step in range(5):
            idx = torch.randint(task.y_train.shape[0], (task.batch_size,), generator=g)
            logits = torch.nn.functional.cross_entropy(_logits(theta, task.x_train[idx]), task.y_train[idx])
            assert float(logits) == pytest.approx(float(losses[step, 0]), rel=1e-5)
            torch_opt.zero_grad()
            logits.backward()
            torch_opt.step()
        torch.testing.assert_close(ours[0], theta.detach(), rtol=1e-5, atol=1e-6)


def _logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from pipeline.weightspace.forward import mlp_forward

    return mlp_forward(unflatten(theta.unsqueeze(0), SPEC), SPEC, x)[0]


def test_no_gradient_crosses_a_truncation_boundary():
    opt = _optimizers()["ff"]
    task = _task()
    gens = [torch.Generator().manual_seed(b) for b in range(B)]
    state = OptState(flatten(random_params(SPEC, B), SPEC), torch.zeros(B, SPEC.n_params, len(MOMENTA)))
    first, _ = unroll(opt, state, task, 3, gens, scale=0.05)
    assert first.flat.requires_grad  # attached to the optimizer within its own unroll
    _, losses = unroll(opt, first, task, 3, gens, scale=0.05)
    # the second unroll's first loss is measured at the (detached) starting point: no path to the optimizer
    assert losses[0].grad_fn is not None
    grads = torch.autograd.grad(losses[0].sum(), list(opt.parameters()), allow_unused=True, retain_graph=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in grads)
    later = torch.autograd.grad(losses[-1].sum(), list(opt.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().max()) > 0 for g in later)


def test_an_evaluation_unroll_takes_the_same_steps_without_a_meta_graph():
    opt = _optimizers()["ng_gnn"].eval()
    task = _task()
    flat = flatten(random_params(SPEC, B), SPEC)
    runs = []
    for meta in (True, False):
        gens = [torch.Generator().manual_seed(b) for b in range(B)]
        runs.append(unroll(opt, OptState(flat, torch.zeros(B, SPEC.n_params, len(MOMENTA))), task, 4, gens, 0.05, meta))
    (s_meta, l_meta), (s_eval, l_eval) = runs
    torch.testing.assert_close(l_eval, l_meta.detach())
    torch.testing.assert_close(s_eval.flat, s_meta.flat.detach())
    assert s_meta.flat.grad_fn is not None and not s_eval.flat.requires_grad and l_eval.grad_fn is None


def test_one_graph_optimizer_runs_on_nets_of_another_width():
    torch.manual_seed(0)
    opt = GraphOptimizer(SPEC.n_layers, "ng_t", hidden=8, layers=2).eval()
    for spec in (SPEC, mlp_spec([9, 7, 2, 5])):
        f = torch.randn(2, spec.n_params, N_FEATURES)
        out = opt(f, optimizee_graph(spec))
        assert out.shape == (2, spec.n_params) and torch.isfinite(out).all()


def test_a_task_is_standardized_on_its_training_images_and_split_by_seed():
    a = make_task("digits_offline", 2, [16], 297, 32, seed=0)
    assert a.spec.layer_sizes == (16, 16, 10) and a.label == "digits_offline: 16 → 16 → 10"
    assert a.x_train.shape == (1500, 16) and a.x_test.shape == (297, 16) and a.batch_size == 32
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-4
    b, c = make_task("digits_offline", 2, [16], 297, 32, seed=0), make_task("digits_offline", 2, [16], 297, 32, seed=1)
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_test, c.x_test)  # same call, same seed


def test_optimize_with_a_baseline_is_the_baseline_from_fresh_nets():
    task = _task()
    seeds = [5, 6]
    t = optimize("sgd", task, 6, seeds, lr=0.05, momentum=0.5)
    state, gens = fresh_state(task, seeds)
    flat, losses = baseline_steps(state.flat, task, 6, 0.05, gens, "sgd", 0.5)
    torch.testing.assert_close(t.final_loss, losses[-6:].mean(0))
    torch.testing.assert_close(t.test_acc, held_out_accuracy(flat, task))
    assert t.curve.shape == (6,)


def test_every_update_of_an_unroll_enters_the_meta_loss():
    """A one-step unroll has one update: its meta-loss is the loss after it, so meta-training
    moves the optimizer (a loss taken only before the update would carry no gradient)."""
    from pipeline.tasks.l2o import MetaSettings, meta_train

    opt = _optimizers()["ff"]
    before = {k: v.clone() for k, v in opt.state_dict().items()}
    settings = MetaSettings(outer_steps=3, unroll=1, horizon=2, n_optimizees=2, lr=1e-3, scale=0.1, grad_clip=1.0)
    history = meta_train(opt, _task(), settings, seed=0)
    assert len(history) == 3 and all(math.isfinite(h) for h in history)
    assert any(not torch.equal(v, before[k]) for k, v in opt.state_dict().items())


def test_the_graph_optimizers_delta_is_the_optimizees_mean_log_degree_and_survives_saving(tmp_path):
    from pipeline.saved import save_model
    from pipeline.tasks.l2o import OptimizerConfig, avg_log_degree, build_optimizer, load_optimizer, optimizer_card

    delta = avg_log_degree(SPEC)
    # 6 inputs (degree 0), 5 hidden (degree 6), 4 hidden (5), 3 outputs (4): mean of log(d + 1)
    expected = (5 * math.log(7) + 4 * math.log(6) + 3 * math.log(5)) / 18
    assert delta == pytest.approx(expected)
    config = OptimizerConfig(hidden=8, layers=2, heads=2)
    opt = build_optimizer("ng_gnn", config, SPEC.n_layers, delta)
    assert {layer.delta for layer in opt.encoder.layers} == {delta}
    path = tmp_path / "opt.safetensors"
    save_model(path, dict(opt.state_dict()), optimizer_card("ng_gnn", config, SPEC.n_layers, 0.01, delta))
    loaded, card = load_optimizer(path)
    assert {layer.delta for layer in loaded.encoder.layers} == {delta} and card["avg_log_degree"] == delta


# CNN optimizees (the paper's): k x k kernels in K x K edge slots


def _cnn():
    from pipeline.zoo.cnn import CNNArch, cnn_spec

    arch = CNNArch((3, 4), (3, 1), (2, 2), "relu")  # a 3 x 3 and a 1 x 1 conv, then the linear head
    return arch, cnn_spec(arch)


def _channelwise(f: torch.Tensor, spec, fn) -> torch.Tensor:
    """``fn`` applied to the parameters of every feature channel of ``f`` ``(B, P, C)``."""
    return torch.stack([flatten(fn(unflatten(f[..., c], spec)), spec) for c in range(f.shape[-1])], -1)


def test_every_cnn_parameter_has_one_place_in_the_optimizers_graph_and_round_trips():
    from pipeline.graphs.neural_graph import params_to_features

    _, spec = _cnn()
    graph = optimizee_graph(spec, 3)
    P, t = spec.n_params, graph.template
    placed = torch.cat([graph.node_param[graph.node_param < P], graph.edge_param[graph.edge_param < P]])
    assert sorted(placed.tolist()) == list(range(P))  # each parameter exactly once
    f = torch.randn(B, P, N_FEATURES, generator=torch.Generator().manual_seed(0))
    g = feature_graphs(f, graph)
    assert g.edge_attr.shape == (B * t.n_edges, 9 * N_FEATURES)
    edges = g.edge_attr.view(B, t.n_edges, 9, N_FEATURES)
    for c in (0, N_FEATURES - 1):  # channel c of every slot is the neural graph of the c-th feature
        x, e = params_to_features(unflatten(f[..., c], spec), t)
        assert torch.equal(edges[..., c], e) and torch.equal(g.x.view(B, t.n_nodes, -1)[..., c : c + 1], x)
    # the 1 x 1 conv and the head sit in the centre slot (4) of their edges
    pos = graph.param_pos.view(1, -1)
    one_by_one = flatten(
        {
            k: torch.ones(1, *v.shape[1:]) * (k.startswith("conv.1.w") or k == "head.weight")
            for k, v in unflatten(torch.zeros(1, P), spec).items()
        },
        spec,
    )
    assert set(pos[one_by_one.bool()].tolist()) == {4}
    assert set(pos[0, graph.node_param[graph.node_param < P]].tolist()) == {9}  # biases: the node place


@pytest.mark.parametrize("kind", ["ng_gnn", "ng_t"])
def test_graph_optimizers_on_cnns_are_equivariant_and_see_wrong_couplings(kind):
    _, spec = _cnn()
    torch.manual_seed(0)
    opt = GraphOptimizer(spec.n_layers, kind, hidden=8, layers=3, kernel=3).eval()
    graph = optimizee_graph(spec, 3)
    f = torch.randn(B, spec.n_params, N_FEATURES, generator=torch.Generator().manual_seed(3))
    perms = random_permutations(spec, B, torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = opt(f, graph)
        got = opt(_channelwise(f, spec, lambda p: permute(p, spec, perms)), graph)
        torch.testing.assert_close(got, flatten(permute(unflatten(out, spec), spec, perms), spec), rtol=1e-5, atol=1e-5)

        def wrong(p):  # conv 0's output channels reversed, conv 1's input channels not
            return dict(p) | {k: p[k].flip(1) for k in ("conv.0.weight", "conv.0.bias")}

        assert (
            float((opt(_channelwise(f, spec, wrong), graph) - flatten(wrong(unflatten(out, spec)), spec)).abs().max())
            > 1e-5
        )


def test_an_optimizer_reads_kernels_up_to_its_own_and_refuses_bigger_ones():
    _, spec = _cnn()
    with pytest.raises(ValueError, match="3 x 3 kernels do not centre in this optimizer's 1 x 1 edge slots"):
        optimizee_graph(spec, 1)
    torch.manual_seed(0)
    opt = GraphOptimizer(SPEC.n_layers, "ng_gnn", hidden=8, layers=2, kernel=3).eval()
    out = opt(_features(), optimizee_graph(SPEC, 3))  # an MLP: 1 x 1 kernels in the centre slot
    assert out.shape == (B, SPEC.n_params) and torch.isfinite(out).all()


def test_a_cnn_task_trains_its_nets_and_a_graph_optimizer_moves_them():
    task = make_task("digits_offline", 2, [4], 297, 16, seed=0, kind="cnn", kernel=3)
    assert task.label == "digits_offline: CNN 1 → 4 → 10, 3 x 3 stride-2 convs"
    assert task.x_train.shape == (1500, 1, 4, 4) and task.spec.n_params == 4 * 9 + 4 + 4 * 10 + 10
    adam = optimize("adam", task, 30, [0, 1], lr=3e-2)
    assert float(adam.curve[-5:].mean()) < float(adam.curve[:5].mean())  # the CNNs learn
    torch.manual_seed(0)
    opt = GraphOptimizer(task.spec.n_layers, "ng_gnn", hidden=8, layers=2, kernel=3).eval()
    state, gens = fresh_state(task, [0, 1])
    after, losses = unroll(opt, state, task, 3, gens, scale=0.05, meta=False)
    assert losses.shape == (3, 2) and not torch.equal(after.flat, state.flat)
