"""Hidden-neuron permutation symmetry of SIRENs, and which metanetworks respect it.

A valid permutation reorders the neurons of a hidden layer ``l`` *consistently*: the rows of
``layers.{l-1}.weight`` / ``layers.{l-1}.bias`` and the columns of ``layers.{l}.weight``. It
leaves the SIREN's function unchanged, so an invariant metanetwork (NG-GNN) must give the same
logits. Wrongly coupled permutations (input neurons, or rows without the matching columns)
change the function, and the metanetwork must be able to tell.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.augment import (
    augmenter,
    compose_input_affine,
    random_input_affines,
    sign_flip_flat,
    sign_flip_graphs,
)
from pipeline.data import coordinate_grid
from pipeline.graphs.neural_graph import features_to_params, graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models import build_model
from pipeline.models.mlp import Settings as MLPConfig
from pipeline.models.ng_gnn import Settings as NGGNNConfig
from pipeline.models.probes import ProbeFeatures
from pipeline.train import data_shape, model_inputs
from pipeline.weightspace.forward import ForwardSpec
from pipeline.weightspace.spec import (
    Params,
    ParamSpec,
    flatten,
    flip_signs,
    permute,
    random_permutations,
    random_signs,
    unflatten,
)
from pipeline.zoo.siren import siren_forward
from tests.conftest import LAYOUT_IDS, LAYOUTS, siren_params

OMEGA0 = 30.0
B = 3


def _forward(params: Params, spec: ParamSpec) -> torch.Tensor:
    return siren_forward(params, spec, coordinate_grid(28, 28), OMEGA0)


def _non_identity_perm(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(n, generator=g)
        if not torch.equal(p, torch.arange(n)):
            return p


def _rows_only(params: Params, layer: int, perm: torch.Tensor) -> Params:
    """Permute hidden ``layer``'s neurons in their incoming weights/bias only (wrong coupling)."""
    out = dict(params)
    out[f"layers.{layer - 1}.weight"] = params[f"layers.{layer - 1}.weight"][:, perm]
    out[f"layers.{layer - 1}.bias"] = params[f"layers.{layer - 1}.bias"][:, perm]
    return out


def _shared_perms(spec: ParamSpec, seed: int) -> dict[int, torch.Tensor]:
    sizes = spec.layer_sizes
    return {lay: _non_identity_perm(sizes[lay], seed + lay) for lay in spec.hidden_layers}


def _assert_perms_not_identity(perms: dict[int, torch.Tensor]) -> None:
    for p in perms.values():
        ident = torch.arange(p.shape[-1]).expand_as(p)
        assert not torch.equal(p, ident), "test setup: permutation is the identity"


# --------------------------------------------------------------------------------------------
# SIREN function
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_siren_output_invariant_under_per_net_hidden_permutations(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    perms = random_permutations(spec, B, torch.Generator().manual_seed(5))
    assert set(perms) == set(spec.hidden_layers)
    for lay, p in perms.items():
        assert p.shape == (B, spec.layer_sizes[lay])
        assert torch.equal(p.sort(dim=1).values, torch.arange(spec.layer_sizes[lay]).expand(B, -1))
    _assert_perms_not_identity(perms)
    permuted = permute(params, spec, perms)
    # the parameters really moved
    assert any(not torch.equal(params[k], permuted[k]) for k in params)
    torch.testing.assert_close(_forward(permuted, spec), _forward(params, spec), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_siren_output_invariant_under_shared_hidden_permutation(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    perms = _shared_perms(spec, seed=3)
    permuted = permute(params, spec, perms)
    assert any(not torch.equal(params[k], permuted[k]) for k in params)
    torch.testing.assert_close(_forward(permuted, spec), _forward(params, spec), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_permute_moves_rows_and_matching_columns(hidden):
    """A valid permutation of layer l moves rows of W_{l-1}, b_{l-1} and columns of W_l together."""
    spec, params = siren_params(hidden, (11, 12, 13))
    lay = 1
    perm = _non_identity_perm(spec.layer_sizes[lay], 0)
    out = permute(params, spec, {lay: perm})
    w_in = params[f"layers.{lay - 1}.weight"]
    assert torch.equal(out[f"layers.{lay - 1}.weight"], w_in[:, perm, :])
    assert torch.equal(out[f"layers.{lay - 1}.bias"], params[f"layers.{lay - 1}.bias"][:, perm])
    assert torch.equal(out[f"layers.{lay}.weight"], params[f"layers.{lay}.weight"][:, :, perm])
    for name in spec.names:
        moved = (f"layers.{lay - 1}.weight", f"layers.{lay - 1}.bias", f"layers.{lay}.weight")
        if name not in moved:
            assert torch.equal(out[name], params[name]), name


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_siren_output_changes_under_wrongly_coupled_permutations(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    ref = _forward(params, spec)
    # input layer (swap x and y coordinates): not a symmetry
    swapped = permute(params, spec, {0: torch.tensor([1, 0])})
    assert (_forward(swapped, spec) - ref).abs().max() > 1e-3
    # rows of each hidden layer without the next layer's columns: not a symmetry
    for lay in spec.hidden_layers:
        wrong = _rows_only(params, lay, _non_identity_perm(spec.layer_sizes[lay], lay))
        assert (_forward(wrong, spec) - ref).abs().max() > 1e-3, f"layer {lay}"


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_per_net_permutation_matches_permuting_each_net_alone(hidden):
    """The gather path ((B, n) perms) equals the index_select path (1-D perm) net by net."""
    spec, params = siren_params(hidden, (11, 12, 13))
    perms = random_permutations(spec, B, torch.Generator().manual_seed(9))
    batched = permute(params, spec, perms)
    for b in range(B):
        single = permute({k: v[b : b + 1] for k, v in params.items()}, spec, {lay: p[b] for lay, p in perms.items()})
        for k in spec.names:
            assert torch.equal(batched[k][b : b + 1], single[k]), (b, k)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_permute_composed_with_inverse_is_identity(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    perms = random_permutations(spec, B, torch.Generator().manual_seed(21))
    _assert_perms_not_identity(perms)
    inverse = {lay: torch.argsort(p, dim=-1) for lay, p in perms.items()}
    there = permute(params, spec, perms)
    back = permute(there, spec, inverse)
    assert set(back) == set(params)
    for k in spec.names:
        assert torch.equal(back[k], params[k]), k
    # the shared (1-D) path too
    shared = _shared_perms(spec, seed=40)
    inverse = {lay: torch.argsort(p) for lay, p in shared.items()}
    back = permute(permute(params, spec, shared), spec, inverse)
    for k in spec.names:
        assert torch.equal(back[k], params[k]), k


# --------------------------------------------------------------------------------------------
# Metanetworks
# --------------------------------------------------------------------------------------------


def _graphs(params: Params, spec: ParamSpec) -> GraphSet:
    n = next(iter(params.values())).shape[0]
    return GraphSet.from_params(params, graph_template(spec), torch.zeros(n), torch.arange(n))


PROBES = [0, 8]


def _ng_gnn(gs: GraphSet, spec: ParamSpec, layers: int, probes: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    # the graphs hold raw (unnormalized) parameters: identity normalization for the probes
    fwd = ForwardSpec("sin", OMEGA0, 0.0, ((0.0, 1.0),) * spec.n_layers, ((0.0, 1.0),) * spec.n_layers)
    shape = data_shape(gs, graph_template(spec), n_classes=10, forward_spec=fwd)
    model = build_model("ng_gnn", NGGNNConfig(hidden=16, layers=layers, probe_features=probes), shape)
    return model.double().eval()


def _logits(model: torch.nn.Module, params: Params, spec: ParamSpec) -> torch.Tensor:
    gs = _graphs(params, spec)
    with torch.no_grad():
        return model(gs.batch(torch.arange(len(gs))))


def _double(params: Params) -> Params:
    return {k: v.double() for k, v in params.items()}


@pytest.mark.parametrize("probes", PROBES, ids=lambda m: f"probes{m}")
@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_ng_gnn_invariant_under_hidden_permutations(hidden, probes):
    spec, params = siren_params(hidden, (11, 12, 13))
    params = _double(params)
    model = _ng_gnn(_graphs(params, spec), spec, layers=3, probes=probes)
    ref = _logits(model, params, spec)
    assert ref.shape == (B, 10) and ref.dtype == torch.float64
    assert ref.abs().max() > 1e-3  # not a degenerate constant-zero output
    per_net = random_permutations(spec, B, torch.Generator().manual_seed(2))
    _assert_perms_not_identity(per_net)
    for perms in (per_net, _shared_perms(spec, seed=7)):
        out = _logits(model, permute(params, spec, perms), spec)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        # in float64 the only differences are summation order: far below the tolerance
        assert (out - ref).abs().max() < 1e-10


@pytest.mark.parametrize("probes", PROBES, ids=lambda m: f"probes{m}")
@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_ng_gnn_detects_wrongly_coupled_permutations(hidden, probes):
    spec, params = siren_params(hidden, (11, 12, 13))
    params = _double(params)
    # The readout sees only output neurons: the input layer is within reach only if the
    # number of message-passing layers is at least the number of parameter layers.
    model = _ng_gnn(_graphs(params, spec), spec, layers=max(3, spec.n_layers), probes=probes)
    ref = _logits(model, params, spec)
    swapped = permute(params, spec, {0: torch.tensor([1, 0])})
    assert (_logits(model, swapped, spec) - ref).abs().max() > 1e-4
    for lay in spec.hidden_layers:
        wrong = _rows_only(params, lay, _non_identity_perm(spec.layer_sizes[lay], lay))
        assert (_logits(model, wrong, spec) - ref).abs().max() > 1e-4, f"layer {lay}"


@pytest.mark.parametrize("probes", PROBES, ids=lambda m: f"probes{m}")
@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_ng_gnn_batch_order_equivariant(hidden, probes):
    """Logits of a shuffled batch are the shuffled logits (graphs do not leak into each other)."""
    spec, params = siren_params(hidden, (11, 12, 13))
    params = _double(params)
    gs = _graphs(params, spec)
    model = _ng_gnn(gs, spec, layers=3, probes=probes)
    idx = torch.tensor([2, 0, 1])
    with torch.no_grad():
        full = model(gs.batch(torch.arange(B)))
        shuffled = model(gs.batch(idx))
        single = model(gs.batch(torch.tensor([1])))
    torch.testing.assert_close(shuffled, full[idx], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(single, full[1:2], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_flat_mlp_baseline_is_not_permutation_invariant(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    template = graph_template(spec)
    gs = _graphs(params, spec)
    torch.manual_seed(0)
    model = build_model("mlp", MLPConfig(hidden=32, layers=2), data_shape(gs, template, 10)).eval()
    perms = _shared_perms(spec, seed=1)
    permuted = permute(params, spec, perms)
    # the permuted SIRENs compute the same function ...
    torch.testing.assert_close(_forward(permuted, spec), _forward(params, spec), atol=1e-5, rtol=0)
    flat = model_inputs(gs, template, "flat")
    flat_p = model_inputs(_graphs(permuted, spec), template, "flat")
    idx = torch.arange(B)
    with torch.no_grad():
        diff = (model(flat.batch(idx)) - model(flat_p.batch(idx))).abs().max()
    # ... but the flat MLP sees a different input vector and gives different logits
    assert diff > 1e-4


# --- sign symmetry of odd activations (SIREN): the basis of the sign_flip augmentation ---


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_siren_output_invariant_under_hidden_sign_flips(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    assert spec.sign_symmetric
    flipped = flip_signs(params, spec, random_signs(spec, B, torch.Generator().manual_seed(5)))
    assert not torch.equal(flipped["layers.0.weight"], params["layers.0.weight"])
    torch.testing.assert_close(_forward(flipped, spec), _forward(params, spec), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_siren_output_changes_under_half_done_sign_flip(hidden):
    """Negating a neuron's incoming weights and bias without its outgoing weights is no symmetry."""
    spec, params = siren_params(hidden, (11, 12, 13))
    wrong = dict(params)
    wrong["layers.0.weight"] = -params["layers.0.weight"]
    wrong["layers.0.bias"] = -params["layers.0.bias"]
    assert (_forward(wrong, spec) - _forward(params, spec)).abs().max() > 1e-3
    # flipping an output neuron is no symmetry either
    out_layer = spec.n_layers
    signs = {out_layer: -torch.ones(B, spec.layer_sizes[out_layer])}
    assert (_forward(flip_signs(params, spec, signs), spec) - _forward(params, spec)).abs().max() > 1e-3


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_graph_sign_flip_augmentation_preserves_every_function(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    template = graph_template(spec)
    gs = GraphSet.from_params(params, template, torch.zeros(B), torch.arange(B))
    batch = gs.batch(torch.arange(B))
    aug = sign_flip_graphs(batch, torch.Generator().manual_seed(3))
    assert not torch.equal(aug.edge_attr, batch.edge_attr)
    x = aug.x.view(B, template.n_nodes, -1)
    e = aug.edge_attr.view(B, template.n_edges, -1)
    back = features_to_params(x, e, template)
    torch.testing.assert_close(_forward(back, spec), _forward(params, spec), rtol=0, atol=1e-5)
    # and the flat version
    flat = flatten(params, spec)
    back_flat = unflatten(sign_flip_flat(flat, spec, torch.Generator().manual_seed(4)), spec)
    torch.testing.assert_close(_forward(back_flat, spec), _forward(params, spec), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_probe_features_are_the_networks_own_activations(hidden):
    """At the output nodes, probe features equal the SIREN evaluated at the probe points."""
    spec, params = siren_params(hidden, (11, 12, 13))
    stats = {k: (0.1, 2.0) for k in spec.names}  # any normalization must be undone exactly
    normed = {k: (v - 0.1) / 2.0 for k, v in params.items()}
    L = spec.n_layers
    fwd = ForwardSpec(
        "sin",
        OMEGA0,
        0.0,
        tuple(stats[f"layers.{l}.weight"] for l in range(L)),
        tuple(stats[f"layers.{l}.bias"] for l in range(L)),
    )
    probes = ProbeFeatures(5, 2, fwd)
    batch = _graphs(normed, spec).batch(torch.arange(B))
    with torch.no_grad():
        h = probes(batch)
        ref = siren_forward(params, spec, probes.points, OMEGA0)
    torch.testing.assert_close(h[batch.node_out].view(B, 5), ref[..., 0], rtol=0, atol=1e-4)
    inputs = batch.node_layer == 0
    torch.testing.assert_close(h[inputs].view(B, 2, 5), probes.points.t().expand(B, 2, 5).detach())


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_probe_only_baseline_samples_the_network_and_nothing_else(hidden):
    """The probe-only MLP's inputs are the SIREN at its points (normalization undone), equal to
    NG-GNN's probe features at the output node; sign flips keep them, a half-done flip does not."""
    from pipeline.models.probe_mlp import ProbeMLP

    spec, params = siren_params(hidden, (11, 12, 13))
    normed = {k: (v - 0.1) / 2.0 for k, v in params.items()}
    L = spec.n_layers
    fwd = ForwardSpec("sin", OMEGA0, 0.0, ((0.1, 2.0),) * L, ((0.1, 2.0),) * L)
    model = ProbeMLP(spec, fwd, n_classes=4, n_probes=5)
    flat = flatten(normed, spec)
    with torch.no_grad():
        sampled = model.sample(flat)
        torch.testing.assert_close(sampled, siren_forward(params, spec, model.points, OMEGA0), rtol=0, atol=1e-4)
        graph_probes = ProbeFeatures(5, 2, fwd)  # same seed: same starting points
        batch = _graphs(normed, spec).batch(torch.arange(B))
        torch.testing.assert_close(graph_probes(batch)[batch.node_out].view(B, 5), sampled[..., 0], atol=1e-4, rtol=0)
        signs = random_signs(spec, B, torch.Generator().manual_seed(2))
        flipped = flatten({k: (v - 0.1) / 2.0 for k, v in flip_signs(params, spec, signs).items()}, spec)
        torch.testing.assert_close(model.sample(flipped), sampled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(flipped), model(flat), rtol=1e-5, atol=1e-6)
        half = dict(params)
        half["layers.0.weight"] = -params["layers.0.weight"]  # the incoming weights only, not the bias
        half_flat = flatten({k: (v - 0.1) / 2.0 for k, v in half.items()}, spec)
        assert (model.sample(half_flat) - sampled).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------
# inr_affine: the INR composed with a random map of its input coordinates, exactly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_inr_affine_draws_the_warped_image_exactly(hidden):
    spec, params = siren_params(hidden, (11, 12, 13))
    A, t = random_input_affines(B, 2, torch.Generator().manual_seed(0))
    assert not torch.allclose(A, torch.eye(2).expand(B, 2, 2)) and t.abs().min() > 0
    coords = coordinate_grid(28, 28)
    warped = (coords @ A.transpose(1, 2)) + t.unsqueeze(1)  # (B, P, 2): x -> A x + t
    got = siren_forward(compose_input_affine(params, spec, A, t), spec, coords, OMEGA0)
    torch.testing.assert_close(got, siren_forward(params, spec, warped, OMEGA0), rtol=0, atol=1e-4)
    assert (got - _forward(params, spec)).abs().max() > 0.05  # the image did move


@pytest.mark.parametrize("hidden", LAYOUTS, ids=LAYOUT_IDS)
def test_inr_affine_on_graphs_and_on_flat_parameters_make_the_same_networks(hidden):
    """Normalized inputs (the stats undone and redone) on both paths; the same draws give the
    same networks, which are the raw networks composed with the drawn maps."""
    spec, params = siren_params(hidden, (11, 12, 13))
    L = spec.n_layers
    fwd = ForwardSpec("sin", OMEGA0, 0.0, ((0.1, 2.0),) * L, ((0.3, 0.5),) * L)
    normed = {k: (v - (0.1 if "weight" in k else 0.3)) / (2.0 if "weight" in k else 0.5) for k, v in params.items()}
    flat_aug = augmenter("inr_affine", "flat", spec, fwd=fwd)
    graph_aug = augmenter("inr_affine", "graph", spec, fwd=fwd)
    out_flat = flat_aug(flatten(normed, spec), torch.Generator().manual_seed(3))
    gs = _graphs(normed, spec)
    out_graph = graph_aug(gs.batch(torch.arange(B)), torch.Generator().manual_seed(3))
    template = graph_template(spec)
    back = features_to_params(out_graph.x.view(B, -1, 1), out_graph.edge_attr.view(B, -1, 1), template)
    torch.testing.assert_close(flatten(back, spec), out_flat, rtol=0, atol=1e-5)
    A, t = random_input_affines(B, 2, torch.Generator().manual_seed(3))
    expected = compose_input_affine(params, spec, A, t)
    raw = unflatten(out_flat, spec)
    for k in spec.names:
        mean, std = (0.1, 2.0) if "weight" in k else (0.3, 0.5)
        torch.testing.assert_close(raw[k] * std + mean, expected[k], rtol=0, atol=1e-5)
    # only the first layer changes
    changed = {k for k in spec.names if not torch.equal(raw[k], normed[k])}
    assert changed == {"layers.0.weight", "layers.0.bias"}
