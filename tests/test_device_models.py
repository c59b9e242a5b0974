"""Every metanetwork, the graph batching and the augmentations run on any device without host synchronisation.

The ``meta`` device holds shapes but no values: a tensor made on a fixed device (the CPU) and
mixed in, or any read of a value (``.item()``, ``.tolist()``, ``int(t)``, ``bool(t)``,
``nonzero()``, boolean-mask indexing, ``bincount``, ``repeat_interleave`` without its size)
raises there. A forward and backward pass on ``meta`` therefore shows that a step is
device-agnostic and never waits for the host, with no GPU needed. The CPU checks at the end show
that the sync-free paths compute exactly what the data-derived ones did.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch_geometric.data import Batch

from pipeline.augment import augmenter, permute_flat, sign_flip_flat, sign_flip_graphs
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.kan_forward import ForwardData, kan_outputs, query_batch, random_points
from pipeline.models import DataShape, build_editor, build_model, model_module, model_names
from pipeline.models.layers import DegreeBuckets, TemplateBuckets, output_states
from pipeline.tasks.editing import Editing
from pipeline.train import data_shape
from pipeline.weightspace.forward import ForwardSpec
from pipeline.weightspace.spec import flatten
from pipeline.zoo.kan import init_kans, kan_spec
from tests.weightspace_cases import SIREN_LAYOUTS, random_params

META = torch.device("meta")
B = 3
SPEC = SIREN_LAYOUTS["siren2-8-12-6-1"]
FWD = ForwardSpec("sin", 30.0, 0.0, ((0.0, 1.0),) * SPEC.n_layers, ((0.0, 1.0),) * SPEC.n_layers)
KAN = kan_spec([2, 5, 4, 1], 3, 2)
SMALL = {"hidden": 8, "layers": 2, "heads": 2, "probe_features": 3, "dropout": 0.1}
# (case id, model name, setting overrides): every registered model, and the reference-faithful variants
VARIANTS = {
    "nfn": [
        ("nfn-np", {"mode": "np", "fourier_features": 2}),
        ("nfn-hnp", {"mode": "hnp"}),
        ("nfn-reference", {"io_scale": 1.0, "head_pool": "hidden", "head_width": 12, "fourier_features": 2}),
    ],
    "dwsnet": [
        ("dwsnet", {}),
        ("dwsnet-reference", {"reduction": "max", "norm": "batch", "head_width": 12, "set_heads": 2}),
    ],
    "ng_gnn": [("ng_gnn", {}), ("ng_gnn-reference", {"probe_projection": True})],
    "ng_t": [("ng_t", {}), ("ng_t-reference", {"probe_projection": True, "attention": "all_pairs"})],
}
CASES = [(cid, name, over) for name in model_names() for cid, over in VARIANTS.get(name, [(name, {})])]
EDITOR_CASES = [c for c in CASES if hasattr(model_module(c[1]), "build_editor")]


def _graphs(spec, seed: int = 0) -> GraphSet:
    params = random_params(spec, B, seed=seed)
    return GraphSet.from_params(params, graph_template(spec), torch.arange(B) % 2, torch.arange(B))


def _shape(gs: GraphSet, spec) -> DataShape:
    L = spec.n_layers
    fwd = ForwardSpec("sin", 30.0, 0.0, ((0.0, 1.0),) * L, ((0.0, 1.0),) * L)
    return data_shape(gs, graph_template(spec), n_classes=4, forward_spec=fwd)


def _settings(name: str, over: dict):
    base = model_module(name).Settings()
    return dataclasses.replace(base, **{k: v for k, v in (SMALL | over).items() if hasattr(base, k)})


def _meta_inputs(gs: GraphSet, kind: str):
    """A batch of every graph of ``gs``, made on the meta device (flat parameters or a PyG batch)."""
    if kind == "flat":
        return flatten(gs.to_params(graph_template(SPEC)), SPEC).to(META)
    return gs.to(META).batch(torch.arange(B, device=META))


def _step_on_meta(model: torch.nn.Module, inputs) -> torch.Tensor:
    """One training-mode forward and backward on the meta device; every parameter gets a meta gradient."""
    model = model.to(META).train()
    out = model(inputs)
    out.sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.device == META, n
    return out


@pytest.mark.parametrize(("cid", "name", "over"), CASES, ids=[c[0] for c in CASES])
def test_predictor_forward_backward_on_meta(cid, name, over):
    gs = _graphs(SPEC)
    model = build_model(name, _settings(name, over), _shape(gs, SPEC))
    out = _step_on_meta(model, _meta_inputs(gs, model_module(name).INPUT_KIND))
    assert out.device == META and out.shape == (B, 4)


@pytest.mark.parametrize(("cid", "name", "over"), EDITOR_CASES, ids=[c[0] for c in EDITOR_CASES])
def test_editor_forward_backward_on_meta(cid, name, over):
    gs = _graphs(SPEC)
    model = build_editor(name, _settings(name, over), _shape(gs, SPEC), init_scale=0.1)
    out = _step_on_meta(model, _meta_inputs(gs, model_module(name).INPUT_KIND))
    assert out.device == META and out.shape == (B, SPEC.n_params)


@pytest.mark.parametrize("name", ["ws_kan", "ng_gnn", "ng_t"])
def test_kan_graph_models_on_meta(name):
    """Graph models on KAN-graphs (vector edge features, grid node features)."""
    gs = _graphs(KAN)
    shape = data_shape(gs, graph_template(KAN), n_classes=2)
    model = build_model(name, _settings(name, {"probe_features": 0}), shape)
    out = _step_on_meta(model, gs.to(META).batch(torch.arange(B, device=META)))
    assert out.shape == (B, 2)


def test_editing_loss_on_meta():
    edit = Editing(SPEC, 30.0, 0.5, {t.name: (0.0, 2.0) for t in SPEC.tensors})
    out = torch.zeros(B, SPEC.n_params, device=META, requires_grad=True)
    loss = edit.loss(out, torch.zeros(B, 5, 6, device=META))
    loss.backward()
    assert loss.device == META and loss.shape == () and out.grad.device == META


# --------------------------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------------------------


def test_graphset_to_meta_batches_there():
    gs = _graphs(SPEC)
    meta = gs.to(META)
    assert meta.uniform_sizes == gs.uniform_sizes == (graph_template(SPEC).n_nodes, graph_template(SPEC).n_edges)
    assert all(getattr(meta, f.name).device == META for f in dataclasses.fields(GraphSet))
    idx = torch.tensor([2, 0])
    ref, got = gs.batch(idx), meta.batch(idx.to(META))
    for key in ("x", "edge_index", "edge_attr", "node_layer", "node_pos", "edge_layer", "node_out", "batch", "ptr"):
        assert (got[key].device, got[key].shape, got[key].dtype) == (META, ref[key].shape, ref[key].dtype), key
    assert got.num_graphs == 2 and got.y.device == META
    # and back: a CPU round trip batches exactly as before
    back = gs.to("cpu").batch(idx)
    assert all(torch.equal(back[k], ref[k]) for k in ("x", "edge_index", "batch", "ptr"))


def concatenated(a: GraphSet, b: GraphSet) -> GraphSet:
    """One graph set of ``a``'s graphs then ``b``'s (two architectures: no uniform sizes)."""
    cat = {
        f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)], dim=1 if f.name == "edge_index" else 0)
        for f in dataclasses.fields(GraphSet)
        if f.name not in ("node_ptr", "edge_ptr")
    }
    return GraphSet(
        **cat,
        node_ptr=torch.cat([a.node_ptr, b.node_ptr[1:] + a.node_ptr[-1]]),
        edge_ptr=torch.cat([a.edge_ptr, b.edge_ptr[1:] + a.edge_ptr[-1]]),
    )


def test_heterogeneous_graphset_batch_matches_pyg():
    """Graphs of different sizes take the general path (sizes read from the data), still exact."""
    het = concatenated(_graphs(SIREN_LAYOUTS["siren2-16-16-1"]), _graphs(SPEC, seed=1))
    assert het.uniform_sizes is None
    idx = torch.tensor([4, 0, 5, 1])
    got = het.batch(idx)
    ref = Batch.from_data_list([het.get(int(i)) for i in idx])
    for key in ("x", "edge_index", "edge_attr", "node_layer", "batch", "ptr"):
        assert torch.equal(got[key], ref[key]), key


def test_augmenters_on_meta_draw_the_same_numbers_as_on_cpu():
    gs = _graphs(SPEC)
    flat = flatten(gs.to_params(graph_template(SPEC)), SPEC)
    graph = gs.batch(torch.arange(B))
    steps = {
        "sign_flip_graphs": lambda x, g: sign_flip_graphs(x, g),
        "sign_flip_flat": lambda x, g: sign_flip_flat(x, SPEC, g),
        "permute_flat": lambda x, g: permute_flat(x, SPEC, g),
        "sign_flip+perm": augmenter("sign_flip", "flat", SPEC, permutations=True),
        "inr_affine_graphs": augmenter("inr_affine", "graph", SPEC, fwd=FWD),
        "sign_flip+inr_affine_flat": augmenter("sign_flip+inr_affine", "flat", SPEC, fwd=FWD),
    }
    for what, fn in steps.items():
        on_graphs = what.endswith("_graphs")
        cpu_in = graph if on_graphs else flat
        meta_in = gs.to(META).batch(torch.arange(B, device=META)) if on_graphs else flat.to(META)
        g_cpu, g_meta = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        ref, out = fn(cpu_in, g_cpu), fn(meta_in, g_meta)
        if on_graphs:
            ref, out = ref.edge_attr, out.edge_attr
        assert out.device == META and out.shape == ref.shape, what
        assert torch.equal(g_cpu.get_state(), g_meta.get_state()), what  # same draws, whatever the device


def test_kan_forward_step_on_meta():
    """One step of :func:`~pipeline.kan_forward.fit_forward` on meta: draws, targets (the KANs' own
    outputs), batch, model, loss, clipping, AdamW, the loss sum. ``fit_forward`` itself cannot run
    on meta: outside the step it reads the target scale and the metrics."""
    params = init_kans(KAN, list(range(6)))
    splits = {"train": torch.arange(4), "val": torch.arange(4, 5), "test": torch.arange(5, 6)}
    data = ForwardData.build(params, KAN, splits, (-1.0, 1.0))
    model = build_model("ws_kan", _settings("ws_kan", {}), data.shape()).to(META).train()
    data = data.to(META)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    kans = data.splits["train"][torch.randint(4, (2,), generator=gen).to(META)]
    points = random_points(2, 3, 2, gen).to(META)
    y = (kan_outputs(data, kans, points) - 0.1) / 2.0
    batch = query_batch(data, kans, points)
    loss = torch.nn.functional.mse_loss(model(batch).view_as(y), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    tot = torch.zeros((), dtype=torch.float64, device=META)
    tot += loss.detach().double()
    assert batch.x.device == META and batch.x.shape[0] == 6 * data.template.n_nodes and tot.device == META


# --------------------------------------------------------------------------------------------
# The sync-free paths compute exactly what the data-derived ones did (CPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SPEC, KAN], ids=["siren", "kan"])
@pytest.mark.parametrize("idx", [[0, 1, 2], [2, 0], [1]], ids=["all", "shuffled", "one"])
def test_template_buckets_equal_data_buckets(spec, idx):
    template = graph_template(spec)
    batch = _graphs(spec).batch(torch.tensor(idx))
    n = batch.x.shape[0]
    ref = DegreeBuckets.build(batch.edge_index[1], n)
    tb = TemplateBuckets(template)
    assert tb.matches(n, batch.edge_index.shape[1], batch.num_graphs)
    got = tb(batch.num_graphs)
    assert torch.equal(got.edge_order, ref.edge_order) and torch.equal(got.degree, ref.degree)
    assert len(got.buckets) == len(ref.buckets)
    for (d, nodes, s, e), (d0, nodes0, s0, e0) in zip(got.buckets, ref.buckets, strict=True):
        assert (d, s, e) == (d0, s0, e0) and torch.equal(nodes, nodes0)
    H, E = 4, batch.edge_index.shape[1]
    g = torch.Generator().manual_seed(0)
    u, v, scale, shift = torch.randn(n, H, generator=g), *(torch.randn(E, H, generator=g) for _ in range(3))
    # the same DegreeBuckets.aggregate on index tensors equal above: the same ops in the same order
    assert torch.equal(got.aggregate(u, v, scale, shift), ref.aggregate(u, v, scale, shift))
    assert tb(batch.num_graphs) is got  # cached per batch size


def test_ng_gnn_template_and_data_buckets_give_identical_outputs():
    gs = _graphs(SPEC)
    shape = _shape(gs, SPEC)
    torch.manual_seed(0)
    with_template = build_model("ng_gnn", _settings("ng_gnn", {"dropout": 0.0}), shape).eval()
    without = build_model("ng_gnn", _settings("ng_gnn", {"dropout": 0.0}), dataclasses.replace(shape, template=None))
    without.load_state_dict(with_template.state_dict())  # the template adds no state
    batch = gs.batch(torch.tensor([2, 0, 1]))
    # the template only supplies the degree buckets, index for index those read from the data
    # (test_template_buckets_equal_data_buckets): every float op and its order are the same
    assert torch.equal(with_template(batch), without.eval()(batch))


def test_output_readout_is_boolean_indexing_and_checks_the_count():
    x = torch.randn(6, 2)
    node_out = torch.tensor([False, True, True, False, True, True])
    assert torch.equal(output_states(x, node_out, 2, 2), x[node_out].view(2, 4))
    with pytest.raises(RuntimeError, match="output neurons"):
        output_states(x, node_out, 2, 1)  # four output nodes where two were promised
