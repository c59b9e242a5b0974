"""No step makes the host wait for the device: every step run on ``meta`` under :class:`NoHostSync`.

A step here is what a training or fitting loop repeats: its batch draw, forward, loss, backward
and update, taken in the middle of an epoch (the epoch's start, which moves its order to the
device once, runs before the check). Each test first shows that the checker sees ops at all,
and the first tests show it catches each kind of sync, so a pass means something.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.augment import augmenter
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.hostsync import HostSync, NoHostSync
from pipeline.models import build_editor, build_model, model_module
from pipeline.tasks.editing import Editing
from pipeline.train import Classification, TrainSettings, model_inputs, shuffled_batches, train_step, warmup_schedule
from tests.test_device_models import CASES, EDITOR_CASES, FWD, KAN, SPEC, _settings, _shape
from tests.weightspace_cases import random_params

META = torch.device("meta")
N, BATCH = 8, 4


# --------------------------------------------------------------------------------------------
# The checker catches each kind of sync, and lets device work and host work through
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "step"),
    [
        ("item", lambda x: x.sum().item()),
        ("bool", lambda x: bool((x > 0).any())),
        ("tolist", lambda x: x.tolist()),
        ("boolean mask", lambda x: x[x > 0]),
        ("boolean mask write", lambda x: x.__setitem__(x > 0, 0.0)),
        ("nonzero", lambda x: torch.nonzero(x)),
        ("bincount", lambda x: torch.bincount(x.long().flatten())),
        ("host indices", lambda x: x[torch.tensor([0, 1])]),
        ("host copy", lambda x: x + torch.arange(3.0).to(x.device)),
        ("host values", lambda x: x * torch.tensor([1.0, 2.0, 3.0], device=x.device)),
    ],
)
def test_the_checker_catches_every_kind_of_sync(what, step):
    x = torch.zeros(4, 3, device=META)
    with pytest.raises(HostSync), NoHostSync():
        step(x)


def test_the_checker_lets_device_and_host_work_through_and_counts_it():
    x = torch.zeros(4, 3, device=META, requires_grad=True)
    with NoHostSync() as check:
        (x @ x.T * torch.tensor(2.0)).sum().backward()  # a 0-d host scalar is an argument, not a transfer
        torch.randint(5, (3,)).sort()  # host-only work
        torch.zeros(3).tolist()
    assert check.seen >= 5 and x.grad.device == META


# --------------------------------------------------------------------------------------------
# Training steps: every model, predictor and editor, flat and graph inputs
# --------------------------------------------------------------------------------------------


def _split(spec, y: torch.Tensor) -> GraphSet:
    return GraphSet.from_params(random_params(spec, N, seed=0), graph_template(spec), y, torch.arange(N))


def _assert_training_step_never_syncs(model, split, objective, augment=None) -> None:
    """Two steps of :func:`pipeline.train.fit_model`'s loop on meta (with ``augment``, an
    :class:`~pipeline.augment.Augmenter`, its epoch's draws as the loop makes them); the second
    one checked."""
    model, split = model.to(META).train(), split.to(META)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = warmup_schedule(TrainSettings(1, BATCH, 1e-3, 0.0, 5, 10.0))(opt)
    gen = torch.Generator().manual_seed(0)
    batches = shuffled_batches(split, BATCH, gen)
    tot = torch.zeros((), dtype=torch.float64, device=META)
    draws = []

    def step(i: int) -> None:
        nonlocal tot, draws
        inputs, y = next(batches)
        if augment is not None:
            if i == 0:
                draws = augment.epoch_draws([BATCH] * (N // BATCH), gen, META)
            inputs = augment.apply(inputs, draws[i])
        _, loss = train_step(model, inputs, y, objective, opt, 10.0)
        sched.step()
        tot += loss.double() * y.shape[0]

    step(0)  # the epoch's start and the optimizer's first step (its state is made there)
    with NoHostSync() as check:
        step(1)
    assert check.seen > 20


@pytest.mark.parametrize(("cid", "name", "over"), CASES, ids=[c[0] for c in CASES])
def test_a_predictor_training_step_never_syncs(cid, name, over):
    split = _split(SPEC, torch.arange(N) % 4)
    model = build_model(name, _settings(name, over), _shape(split, SPEC))
    inputs = model_inputs(split, graph_template(SPEC), model_module(name).INPUT_KIND)
    _assert_training_step_never_syncs(model, inputs, Classification(4))


@pytest.mark.parametrize("augment", ["sign_flip", "inr_affine", "sign_flip+inr_affine", "perm"])
@pytest.mark.parametrize("name", ["mlp", "ng_gnn"])
def test_an_augmented_training_step_never_syncs(name, augment):
    split = _split(SPEC, torch.arange(N) % 4)
    kind = model_module(name).INPUT_KIND
    if augment == "perm" and kind != "flat":
        pytest.skip("graph models need no permutation augmentation")
    aug = augmenter("sign_flip" if augment == "perm" else augment, kind, SPEC, augment == "perm", FWD)
    model = build_model(name, _settings(name, {}), _shape(split, SPEC))
    _assert_training_step_never_syncs(model, model_inputs(split, graph_template(SPEC), kind), Classification(4), aug)


@pytest.mark.parametrize(("cid", "name", "over"), EDITOR_CASES, ids=[c[0] for c in EDITOR_CASES])
def test_an_editing_step_never_syncs(cid, name, over):
    split = _split(SPEC, torch.rand(N, 5, 6))  # target images
    model = build_editor(name, _settings(name, over), _shape(split, SPEC), init_scale=0.1)
    inputs = model_inputs(split, graph_template(SPEC), model_module(name).INPUT_KIND)
    edit = Editing(SPEC, 30.0, 0.5, {t.name: (0.0, 2.0) for t in SPEC.tensors})
    _assert_training_step_never_syncs(model, inputs, edit)


@pytest.mark.parametrize("name", ["ws_kan", "ng_gnn", "ng_t"])
def test_a_kan_graph_training_step_never_syncs(name):
    from pipeline.train import data_shape

    split = _split(KAN, torch.arange(N) % 2)
    model = build_model(name, _settings(name, {"probe_features": 0}), data_shape(split, graph_template(KAN), 2))
    _assert_training_step_never_syncs(model, split, Classification(2))


def test_an_adaptation_step_never_syncs():
    from pipeline.tasks.adaptation import Adaptation
    from pipeline.zoo.adapt_zoo import pair_spec

    spec = pair_spec(6, [5])
    split = _split(spec, torch.arange(N) % 3)  # the pair of each net
    model = build_editor("dwsnet", _settings("dwsnet", {}), _shape(split, spec), init_scale=0.1)
    banks = {k: torch.rand(3, 10, 6) for k in ("x_train", "x_test", "x_source")}
    labels = {k: torch.randint(2, (3, 10)) for k in ("y_train", "y_test")}
    stats = {t.name: (0.0, 1.0) for t in spec.tensors}
    objective = Adaptation(spec, stats, **banks, **labels, novel=torch.zeros(3, dtype=torch.bool)).to(META)
    inputs = model_inputs(split, graph_template(spec), "flat")
    _assert_training_step_never_syncs(model, inputs, objective)


def test_a_kan_forward_step_never_syncs():
    """The KAN forward task's stream: fresh (KAN, point) pairs each step, drawn a block at a time."""
    from pipeline.kan_forward import ForwardData, ForwardSettings, QueryStream
    from pipeline.train import Regression
    from pipeline.zoo.kan import init_kans

    splits = {"train": torch.arange(4), "val": torch.arange(4, 5), "test": torch.arange(5, 6)}
    data = ForwardData.build(init_kans(KAN, list(range(6))), KAN, splits, (-1.0, 1.0))
    model = build_model("ws_kan", _settings("ws_kan", {}), data.shape()).to(META).train()
    stream = QueryStream(data, ForwardSettings(steps=4, eval_every=4, kans_per_step=2, points_per_kan=3)).to(META)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = stream.epoch_batches(BATCH, torch.Generator().manual_seed(0))
    inputs, y = next(batches)  # the block's draws move to the device here, once
    train_step(model, inputs, y, Regression(0.0, 1.0), opt, 10.0)
    objective = Regression(0.0, 1.0)
    with NoHostSync() as check:
        inputs, y = next(batches)
        train_step(model, inputs, y, objective, opt, 10.0)
    assert check.seen > 20


def test_the_checker_names_a_training_step_that_copies_its_batch_from_the_host():
    """Indices moved to the device every step (what :func:`shuffled_batches` does once per epoch)."""
    split = _split(SPEC, torch.arange(N) % 4).to(META)
    model = build_model("ng_gnn", _settings("ng_gnn", {}), _shape(_split(SPEC, torch.arange(N) % 4), SPEC)).to(META)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(HostSync, match="host tensor of shape"), NoHostSync():
        idx = torch.randperm(N)[:BATCH].to(META)
        train_step(model, split.batch(idx), split.y[idx], Classification(4), opt, 10.0)


# --------------------------------------------------------------------------------------------
# Zoo fitters' steps
# --------------------------------------------------------------------------------------------


def test_a_siren_fitting_step_never_syncs():
    from pipeline.data import coordinate_grid
    from pipeline.zoo import siren

    spec = siren.siren_spec([16, 16])
    settings = siren.FitSettings(steps=5, lr=1e-3, omega0=30.0, variant="standard", target_psnr=30.0)
    coords = coordinate_grid(8, 8).to(META)
    model = siren._BatchedSiren(spec, coords, settings.omega0, 0.0)
    theta = siren.init_sirens(spec, [1, 2, 3], settings.omega0, "standard").to(META)
    f = siren.Fitting(
        theta=theta,
        m=torch.zeros_like(theta),
        v=torch.zeros_like(theta),
        grad=torch.empty_like(theta),
        active=torch.arange(3, device=META),
        ghost=torch.zeros(3, dtype=torch.bool, device=META),
        reached=torch.zeros(3, dtype=torch.bool, device=META),
        final=theta.clone(),
        final_mse=torch.zeros(3, device=META),
        steps_used=torch.zeros(3, dtype=torch.long, device=META),
    )
    target = torch.empty(3, 64, 1, device=META)
    with NoHostSync() as check:
        siren.fitting_step(model, f, target, 1, settings)
    assert check.seen > 20


def test_a_cnn_zoo_step_never_syncs():
    from pipeline.optim import AdamSettings
    from pipeline.weightspace.spec import flatten
    from pipeline.zoo.cnn import cnn_spec
    from pipeline.zoo.cnn_zoo import _draws, cnn_step, draw_cnn_hyper, init_cnns, run_data
    from tests.test_cnn import HETEROGENEOUS, RANGES

    arch, seeds = HETEROGENEOUS, [1, 2]
    spec = cnn_spec(arch)
    hypers = [draw_cnn_hyper(s, RANGES) for s in seeds]
    y = torch.randint(arch.n_classes, (20,))
    runs = [run_data(h, s, y, arch.n_classes) for h, s in zip(hypers, seeds, strict=True)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    idx, mask = _draws(runs, hypers, gens, 2, 4, arch.channels[-1], META)
    flat = flatten(init_cnns(arch, seeds, [h["init_scale"] for h in hypers]), spec).to(META).requires_grad_(True)
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    x = torch.empty(20, 1, 14, 14, device=META)
    labels = torch.stack([r[1] for r in runs]).to(META)
    lr, wd, steps = (
        torch.full((2,), 1e-3, device=META),
        torch.zeros(2, 1, device=META),
        torch.full((2,), 9, device=META),
    )
    with NoHostSync() as check:
        cnn_step(flat, m, v, 1, arch, spec, x, labels, idx[1], mask[1], lr, wd, steps, AdamSettings(9))
    assert check.seen > 20


def test_a_domain_adaptation_zoo_step_never_syncs():
    from pipeline.optim import AdamSettings
    from pipeline.weightspace.spec import flatten
    from pipeline.zoo.adapt_zoo import init_pair_mlps, pair_spec, pair_step

    spec = pair_spec(6, [5])
    flat = flatten(init_pair_mlps(spec, [1, 2]), spec).to(META).requires_grad_(True)
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    x, y = torch.empty(2, 10, 6, device=META), torch.zeros(2, 10, dtype=torch.long, device=META)
    idx = torch.zeros(2, 4, dtype=torch.long, device=META)
    with NoHostSync() as check:
        pair_step(flat, m, v, 1, spec, x, y, idx, torch.full((2,), 1e-2, device=META), AdamSettings(5))
    assert check.seen > 20


def test_a_kan_zoo_fitting_step_never_syncs():
    from pipeline.data import coordinate_grid
    from pipeline.optim import AdamSettings
    from pipeline.zoo import kan
    from pipeline.zoo.kan_zoo import GRID_RANGE

    spec = kan.kan_spec([2, 4, 1], 5, 3)
    params = {k: v.to(META) for k, v in kan.init_kans(spec, [1, 2], grid_range=GRID_RANGE).items()}
    coords = coordinate_grid(4, 4).to(META)

    def loss_fn(p):
        return kan.kan_forward(p, spec, coords, uniform=GRID_RANGE).square().mean(dim=(1, 2))

    lr = torch.full((2,), 1e-2, device=META)
    kan.train_kans(params, spec, loss_fn, AdamSettings(1), lr)  # the spline constants move to the device once
    with NoHostSync() as check:
        kan.train_kans(params, spec, loss_fn, AdamSettings(2), lr)
    assert check.seen > 20


# --------------------------------------------------------------------------------------------
# Learning to optimize: a learned step, the meta-update, the Adam baseline
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ff", "ng_gnn", "ng_t"])
def test_a_learned_optimizer_step_and_its_meta_update_never_sync(kind):
    from pipeline.tasks.l2o import (
        FFOptimizer,
        GraphOptimizer,
        Task,
        batch_indices,
        fresh_state,
        learned_step,
        optimizee_graph,
    )
    from pipeline.weightspace.spec import mlp_spec

    spec = mlp_spec([6, 5, 3])
    g = torch.Generator().manual_seed(0)
    task = Task(spec, torch.randn(20, 6, generator=g), torch.randint(3, (20,), generator=g), torch.randn(5, 6),
                torch.randint(3, (5,)), batch_size=4)  # fmt: skip
    task = dataclasses.replace(
        task, **{f: getattr(task, f).to(META) for f in ("x_train", "y_train", "x_test", "y_test")}
    )
    opt = FFOptimizer(8) if kind == "ff" else GraphOptimizer(spec.n_layers, kind, hidden=8, layers=2)
    opt = opt.to(META)
    graph = optimizee_graph(spec, opt.kernel).to(META) if hasattr(opt, "kernel") else None
    state, gens = fresh_state(task, [1, 2], META)
    idx = batch_indices(task, gens, META, 2)
    meta_opt = torch.optim.Adam(opt.parameters(), lr=1e-3)
    flat = state.flat.requires_grad_(True)

    def step(i: int, flat, moments):
        flat, moments, loss = learned_step(opt, flat, moments, task, idx[i], 0.1, graph)
        meta_opt.zero_grad(set_to_none=True)
        loss.mean().backward(retain_graph=True)
        torch.nn.utils.clip_grad_norm_(opt.parameters(), 1.0)
        meta_opt.step()
        return flat, moments

    flat, moments = step(0, flat, state.moments)  # the meta-optimizer's state is made here
    with NoHostSync() as check:
        step(1, flat, moments)
    assert check.seen > 20


# --------------------------------------------------------------------------------------------
# Batches of several architectures (the CNN Wild Park zoo): sizes and degrees from the host
# --------------------------------------------------------------------------------------------


def _mixed() -> GraphSet:
    """``N`` graphs of a two-hidden-layer SIREN then ``N`` of a three-hidden-layer one (made on the
    CPU, as a split is loaded), labels of four classes."""
    from tests.test_device_models import concatenated
    from tests.weightspace_cases import SIREN_LAYOUTS

    small = _split(SIREN_LAYOUTS["siren2-16-16-1"], torch.arange(N) % 4)
    return concatenated(small, _split(SPEC, torch.arange(N) % 4))


@pytest.mark.parametrize("name", ["ng_gnn", "ng_t", "statnn"])
def test_a_training_step_on_several_architectures_never_syncs(name):
    from pipeline.train import data_shape

    het = _mixed()
    model = build_model(name, _settings(name, {"probe_features": 0}), data_shape(het, None, 4))
    _assert_training_step_never_syncs(model, het, Classification(4))


def test_a_batch_of_several_architectures_without_its_layout_reads_its_sizes():
    """The control: collated without the host's :class:`~pipeline.graphs.store.BatchLayout`, a
    mixed batch sizes its node and edge lists from the data, and the checker names it."""
    het = _mixed().to(META)
    with pytest.raises(HostSync), NoHostSync():
        het.batch(torch.arange(2 * BATCH, device=META))


def test_a_batch_layout_is_what_the_batch_holds_and_gives_the_same_degree_buckets():
    """On the CPU: the host layout's totals and in-degree histogram are those of the collated batch,
    the batch is the one collated without it, and :meth:`DegreeBuckets.build` with the histogram
    returns exactly the buckets it reads from the data without it."""
    from pipeline.models.layers import DegreeBuckets

    het = _mixed()
    order = torch.randperm(len(het), generator=torch.Generator().manual_seed(3))
    for idx in order.split(5):
        layout = het.layout(idx)
        with_layout, without = het.batch(idx, layout), het.batch(idx)
        assert (layout.n_nodes, layout.n_edges) == (without.num_nodes, without.num_edges)
        deg = torch.bincount(without.edge_index[1], minlength=without.num_nodes)
        assert layout.in_degrees == tuple(zip(*(t.tolist() for t in deg.unique(return_counts=True)), strict=True))
        for key in ("x", "edge_index", "edge_attr", "node_layer", "node_pos", "edge_layer", "batch", "ptr"):
            assert torch.equal(with_layout[key], without[key]), key
        assert with_layout.in_degrees == layout.in_degrees
        ours = DegreeBuckets.build(with_layout.edge_index[1], layout.n_nodes, layout.in_degrees)
        read = DegreeBuckets.build(without.edge_index[1], without.num_nodes)
        assert torch.equal(ours.edge_order, read.edge_order) and torch.equal(ours.degree, read.degree)
        assert [(d, s, e) for d, _, s, e in ours.buckets] == [(d, s, e) for d, _, s, e in read.buckets]
        assert all(torch.equal(a[1], b[1]) for a, b in zip(ours.buckets, read.buckets, strict=True))
    assert _split(SPEC, torch.zeros(N)).layout(order[:4]) is None  # one template: sizes follow from B


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "mixed"), [("ng_gnn", False), ("ng_gnn", True), ("statnn", True)])
def test_a_training_step_on_cuda_never_synchronizes(name, mixed):
    """The same property on a real GPU: a mid-epoch step under ``set_sync_debug_mode("error")``,
    on graphs of one template and of several architectures."""
    from pipeline.train import data_shape

    cuda = torch.device("cuda")
    cpu_split = _mixed() if mixed else _split(SPEC, torch.arange(N) % 4)
    shape = data_shape(cpu_split, None, 4) if mixed else _shape(cpu_split, SPEC)
    model = build_model(name, _settings(name, {"probe_features": 0} if mixed else {}), shape).to(cuda)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batches = shuffled_batches(cpu_split.to(cuda), BATCH, torch.Generator().manual_seed(0))
    inputs, y = next(batches)
    train_step(model, inputs, y, Classification(4), opt, 10.0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        inputs, y = next(batches)
        train_step(model, inputs, y, Classification(4), opt, 10.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
