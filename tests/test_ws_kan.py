"""Hidden-neuron permutation symmetry of KANs, and the metanetworks of the KAN-graph that respect it.

A valid permutation of hidden layer ``l`` moves the rows of ``layers.{l-1}``'s edge tensors
(``coef``, ``scale_base``, ``scale_sp``) together with the columns of ``layers.{l}``'s and the
rows of ``layers.{l}.grid``: the KAN's function is unchanged, so WS-KAN and NG-GNN (run on the
KAN-graph) must give the same output. Wrongly coupled permutations (rows without the matching
columns and grid rows, or input neurons) change the function, and the metanetworks must tell.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models import build_model
from pipeline.models.ng_gnn import Settings as NGGNNConfig
from pipeline.models.ws_kan import WSKAN
from pipeline.train import data_shape
from pipeline.weightspace.spec import Params, ParamSpec, permute, random_permutations
from pipeline.zoo.kan import init_kans, kan_forward, kan_spec

B = 3
N_TARGETS = 3
# (layer sizes, grid size G, spline order k): a KAN-INR-like layout, and three hidden layers of different widths
KAN_LAYOUTS = [([2, 8, 8, 1], 5, 3), ([3, 5, 4, 6, 2], 3, 2)]
KAN_LAYOUT_IDS = ["kan2-8-8-1_G5k3", "kan3-5-4-6-2_G3k2"]
GRIDS = ["uniform", "jittered"]
MODELS = ["ws_kan", "ng_gnn"]
EDGE_TENSORS = ("coef", "scale_base", "scale_sp")


def kan_params(layout, grids: str, seeds=(11, 12, 13)) -> tuple[ParamSpec, Params]:
    """pykan-initialized KANs plus noise on every edge tensor (so nets and edges differ).

    ``grids="jittered"`` adds a sorted (hence order-preserving) jitter of up to half a knot
    spacing to every node's knots, so that grid node features differ between nodes.
    """
    sizes, grid_size, order = layout
    spec = kan_spec(sizes, grid_size, order)
    params = init_kans(spec, list(seeds))
    g = torch.Generator().manual_seed(sum(seeds))
    out: Params = {}
    for name, v in params.items():
        if name.endswith(".grid"):
            if grids == "jittered":
                step = float((v[..., 1:] - v[..., :-1]).min())
                v = v + torch.sort(torch.rand(v.shape, generator=g), dim=-1).values * (0.5 * step)
        else:
            v = v + torch.randn(v.shape, generator=g)
        out[name] = v.contiguous()
    return spec, out


def _non_identity_perm(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(n, generator=g)
        if not torch.equal(p, torch.arange(n)):
            return p


def _rows_only(params: Params, perm: torch.Tensor) -> Params:
    """Permute hidden layer 1 in layer 0's edge tensors only, not in layer 1's columns or grid (wrong)."""
    out = dict(params)
    for t in EDGE_TENSORS:
        out[f"layers.0.{t}"] = params[f"layers.0.{t}"][:, perm]
    return out


def _wrong_couplings(params: Params, spec: ParamSpec) -> dict[str, Params]:
    return {
        "layer-0 rows only": _rows_only(params, _non_identity_perm(spec.layer_sizes[1], 1)),
        "input layer": permute(params, spec, {0: _non_identity_perm(spec.layer_sizes[0], 2)}),
    }


def _valid_perms(spec: ParamSpec, seed: int) -> dict[int, torch.Tensor]:
    perms = random_permutations(spec, B, torch.Generator().manual_seed(seed))
    for p in perms.values():
        assert not torch.equal(p, torch.arange(p.shape[-1]).expand_as(p)), "test setup: identity permutation"
    return perms


def _graphs(params: Params, spec: ParamSpec) -> GraphSet:
    n = next(iter(params.values())).shape[0]
    return GraphSet.from_params(params, graph_template(spec), torch.zeros(n), torch.arange(n))


def _model(name: str, gs: GraphSet, spec: ParamSpec) -> torch.nn.Module:
    """A small float32 model in eval mode; 4 layers reach the output nodes from the inputs (L <= 4).

    Every linear weight is doubled: PyTorch's default ``nn.Linear`` init (std ``1/sqrt(3 fan_in)``)
    shrinks the signal at each map, so an untrained 4-layer model changes by only ~1e-4 (relative)
    under a wrong coupling (still ~1000x the float noise of a valid permutation). Doubled weights
    are a generic, non-contractive point of the same model family, where it is > 2e-3.
    """
    torch.manual_seed(0)
    shape = data_shape(gs, graph_template(spec), n_classes=N_TARGETS)
    if name == "ws_kan":
        model = WSKAN(shape.node_dim, shape.edge_dim, shape.n_pos, shape.n_out, N_TARGETS, hidden=32, layers=4)
    else:
        model = build_model(name, NGGNNConfig(hidden=16, layers=4, probe_features=0), shape)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(2.0)
    return model.eval()


def _outputs(model: torch.nn.Module, params: Params, spec: ParamSpec) -> torch.Tensor:
    gs = _graphs(params, spec)
    with torch.no_grad():
        return model(gs.batch(torch.arange(len(gs))))


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------------------------
# KAN function: the couplings under test are (not) symmetries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grids", GRIDS)
@pytest.mark.parametrize("layout", KAN_LAYOUTS, ids=KAN_LAYOUT_IDS)
def test_kan_function_invariant_only_under_correctly_coupled_permutations(layout, grids):
    spec, params = kan_params(layout, grids)
    x = torch.rand(64, spec.layer_sizes[0], generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = kan_forward(params, spec, x)
    permuted = kan_forward(permute(params, spec, _valid_perms(spec, 5)), spec, x)
    torch.testing.assert_close(permuted, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    for what, wrong in _wrong_couplings(params, spec).items():
        assert _rel_diff(kan_forward(wrong, spec, x), ref) > 1e-3, what


# --------------------------------------------------------------------------------------------
# Metanetworks on the KAN-graph
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grids", GRIDS)
@pytest.mark.parametrize("layout", KAN_LAYOUTS, ids=KAN_LAYOUT_IDS)
@pytest.mark.parametrize("name", MODELS)
def test_invariant_under_hidden_permutations(name, layout, grids):
    spec, params = kan_params(layout, grids)
    model = _model(name, _graphs(params, spec), spec)
    ref = _outputs(model, params, spec)
    assert ref.shape == (B, N_TARGETS) and ref.dtype == torch.float32
    scale = float(ref.abs().max())
    assert scale > 1e-3  # not a degenerate constant-zero output
    out = _outputs(model, permute(params, spec, _valid_perms(spec, 2)), spec)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("grids", GRIDS)
@pytest.mark.parametrize("layout", KAN_LAYOUTS, ids=KAN_LAYOUT_IDS)
@pytest.mark.parametrize("name", MODELS)
def test_detects_wrongly_coupled_permutations(name, layout, grids):
    spec, params = kan_params(layout, grids)
    model = _model(name, _graphs(params, spec), spec)
    ref = _outputs(model, params, spec)
    for what, wrong in _wrong_couplings(params, spec).items():
        assert _rel_diff(_outputs(model, wrong, spec), ref) > 1e-3, what


@pytest.mark.parametrize("layout", KAN_LAYOUTS, ids=KAN_LAYOUT_IDS)
def test_ws_kan_batch_order_equivariant(layout):
    """Outputs of a shuffled batch are the shuffled outputs (graphs do not leak into each other)."""
    spec, params = kan_params(layout, "jittered")
    gs = _graphs(params, spec)
    model = _model("ws_kan", gs, spec)
    idx = torch.tensor([2, 0, 1])
    with torch.no_grad():
        full = model(gs.batch(torch.arange(B)))
        shuffled = model(gs.batch(idx))
        single = model(gs.batch(torch.tensor([1])))
    torch.testing.assert_close(shuffled, full[idx], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single, full[1:2], rtol=1e-5, atol=1e-6)


def test_ws_kan_adamw_step_gives_finite_gradients_for_every_parameter():
    spec, params = kan_params(KAN_LAYOUTS[1], "jittered")
    gs = _graphs(params, spec)
    shape = data_shape(gs, graph_template(spec), n_classes=N_TARGETS)
    model = WSKAN(shape.node_dim, shape.edge_dim, shape.n_pos, shape.n_out, N_TARGETS, hidden=16, layers=3, dropout=0.1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    batch = gs.batch(torch.arange(B))
    target = torch.randn(B, N_TARGETS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.mse_loss(model(batch), target)
    opt.zero_grad()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} gets no gradient"
        assert torch.isfinite(p.grad).all(), n
    assert any(float(p.grad.abs().max()) > 0 for p in model.parameters())
    opt.step()
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
        assert not torch.equal(p, before[n]), f"{n} did not move"
    assert torch.isfinite(torch.nn.functional.mse_loss(model(batch), target))
