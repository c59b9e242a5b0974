"""The expressivity check's data path and training loop (``pipeline/kan_forward.py``).

* the on-the-fly (KAN, query point) batch is exactly the KAN-graph of that KAN with the point's
  features on its input nodes, and its target is the KAN's own output (checked against a real
  pykan model);
* a prediction is invariant under hidden-node permutations of the KAN, and changes when the
  query is coupled to the wrong input node;
* the position-only reference is the mean training-KAN output; training selects on validation.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.graphs.store import GraphSet
from pipeline.kan_forward import (
    QUERY_DIM,
    ForwardData,
    ForwardSettings,
    fit_forward,
    kan_outputs,
    mean_kan_reference,
    query_batch,
    query_features,
    random_points,
)
from pipeline.models import build_model
from pipeline.models.ng_gnn import Settings as NGGNNConfig
from pipeline.models.ws_kan import Settings as WSKANConfig
from pipeline.weightspace.spec import permute, random_permutations
from pipeline.zoo.kan import init_kans, kan_spec
from pipeline.zoo.pykan_io import quiet_pykan, to_pykan

GRID = (-1.0, 1.0)


def _data(n: int = 12, sizes=(2, 5, 4, 1), seed: int = 0) -> ForwardData:
    """Random pykan-initialized KANs with noisy edges, split 6 / 3 / 3 (or proportionally)."""
    spec = kan_spec(list(sizes), 5, 3)
    params = init_kans(spec, list(range(seed, seed + n)))
    g = torch.Generator().manual_seed(seed)
    params = {k: v if k.endswith(".grid") else v + 0.3 * torch.randn(v.shape, generator=g) for k, v in params.items()}
    a, b = n // 2, n // 2 + n // 4
    splits = {"train": torch.arange(a), "val": torch.arange(a, b), "test": torch.arange(b, n)}
    return ForwardData.build(params, spec, splits, GRID)


def _model(name: str, data: ForwardData) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = data.shape()
    cfg = WSKANConfig(hidden=16, layers=4) if name == "ws_kan" else NGGNNConfig(hidden=16, layers=4, probe_features=0)
    model = build_model(name, cfg, shape)
    with torch.no_grad():  # a generic, non-contractive point of the model family (see test_ws_kan._model)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(2.0)
    return model.eval()


def test_query_batch_is_the_kan_graph_with_the_query_on_its_input_nodes():
    data = _data()
    kans = torch.tensor([3, 0, 7])
    points = random_points(3, 2, 2, torch.Generator().manual_seed(1))
    batch = query_batch(data, kans, points)
    t = data.template
    N, E = t.n_nodes, t.n_edges
    assert batch.num_graphs == 6 and batch.x.shape == (6 * N, data.node_dim)
    # reference: the stored-graph path, graph by graph
    sub = {k: v[kans.repeat_interleave(2)] for k, v in data.params.items()}
    from pipeline.weightspace.normalize import apply_stats, fit_stats

    stats = fit_stats({k: v[data.splits["train"]] for k, v in data.params.items()}, data.spec)
    ref = GraphSet.from_params(apply_stats(sub, data.spec, stats), t, torch.zeros(6), torch.arange(6))
    torch.testing.assert_close(batch.edge_attr, ref.edge_attr)
    torch.testing.assert_close(batch.x[:, :-QUERY_DIM], ref.x)
    for g in range(6):
        nodes = slice(g * N, (g + 1) * N)
        assert torch.equal(batch.edge_index[:, g * E : (g + 1) * E], t.edge_index + g * N)
        q = batch.x[nodes, -QUERY_DIM:]
        inputs = t.node_layer == 0
        assert (q[~inputs] == 0).all()  # zero padding, never summed with anything
        torch.testing.assert_close(q[inputs], query_features(points[g // 2, g % 2]))
        assert int(batch.node_out[nodes].sum()) == 1 and (batch.batch[nodes] == g).all()


def test_targets_are_the_kans_own_outputs_in_pykan():
    data = _data()
    kans = torch.tensor([2, 5])
    points = random_points(2, 7, 2, torch.Generator().manual_seed(2))
    y = kan_outputs(data, kans, points)
    assert data.grid_range == GRID  # uniform knots: the fast spline path
    for b, k in enumerate(kans.tolist()):
        with quiet_pykan():
            model = to_pykan(data.params, data.spec, k)
            with torch.no_grad():
                expected = model(points[b])[:, 0]
        torch.testing.assert_close(y[b], expected, atol=1e-5, rtol=1e-5)


def test_non_uniform_grids_use_each_nodes_own_knots():
    data = _data()
    params = dict(data.params)
    params["layers.1.grid"] = params["layers.1.grid"] * 1.1
    moved = ForwardData.build(params, data.spec, data.splits, GRID)
    assert moved.grid_range is None
    points = random_points(2, 5, 2, torch.Generator().manual_seed(3))
    with quiet_pykan():
        model = to_pykan(params, data.spec, 1)
        with torch.no_grad():
            expected = model(points[0])[:, 0]
    torch.testing.assert_close(kan_outputs(moved, torch.tensor([1]), points[:1])[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ws_kan", "ng_gnn"])
@pytest.mark.parametrize("sizes", [(2, 5, 4, 1), (2, 3, 6, 4, 1)], ids=["2-5-4-1", "2-3-6-4-1"])
def test_prediction_invariant_under_hidden_permutations_and_not_under_wrong_couplings(name, sizes):
    data = _data(sizes=sizes)
    model = _model(name, data)
    kans = torch.arange(3)
    points = random_points(3, 4, 2, torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(query_batch(data, kans, points))
    scale = float(ref.abs().max())
    assert scale > 1e-3
    perms = random_permutations(data.spec, len(data.splits["train"]) * 2, torch.Generator().manual_seed(5))
    permuted = ForwardData.build(permute(data.params, data.spec, perms), data.spec, data.splits, GRID)
    with torch.no_grad():
        out = model(query_batch(permuted, kans, points))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(kan_outputs(permuted, kans, points), kan_outputs(data, kans, points))
    # wrong coupling: the query's coordinates swapped between the two input nodes, KAN unchanged
    with torch.no_grad():
        swapped = model(query_batch(data, kans, points.flip(-1)))
    assert float((swapped - ref).abs().max()) / scale > 1e-3


def test_mean_kan_reference_is_the_mean_training_output():
    data = _data()
    points = random_points(4, 3, 2, torch.Generator().manual_seed(6))
    train = data.splits["train"]
    each = kan_outputs(data, train, points.reshape(1, -1, 2).expand(len(train), -1, -1))
    torch.testing.assert_close(mean_kan_reference(data, points, chunk=4), each.mean(0).view(4, 3))


def test_fit_forward_selects_on_validation_and_learns():
    data = _data(n=24)
    model = _model("ws_kan", data).train()
    settings = ForwardSettings(steps=60, kans_per_step=6, points_per_kan=8, lr=3e-3, eval_every=10, eval_points=8)
    seen = []
    res = fit_forward(model, data, settings, seed=0, on_eval=seen.append)
    assert len(res.history) == 6 and seen == res.history
    vals = [h["val_r2"] for h in res.history]
    # bookkeeping: the best row's numbers are copied, not recomputed
    assert res.best_val == max(vals) and res.history[res.best_epoch - 1]["val_r2"] == res.best_val
    assert all(
        h["test_r2_at_best_val"] == res.history[-1]["test_r2_at_best_val"] for h in res.history[res.best_epoch - 1 :]
    )
    assert set(res.test) == {"loss", "mse", "r2", "rel_rmse", "tau"} and set(res.reference) == set(res.test)
    assert [h["step"] for h in res.history] == [10, 20, 30, 40, 50, 60]
    assert math.isclose(res.test["rel_rmse"] ** 2, 1 - res.test["r2"], rel_tol=1e-6)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]  # fresh data every step, still learns
    assert res.n_params == sum(p.numel() for p in model.parameters())
