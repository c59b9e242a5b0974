"""INR editing: dilation, rendering, loss, and the equivariant editors (DWSNet, NFN, NG-GNN, NG-T)."""

from __future__ import annotations

import pytest
import torch

from pipeline.data import coordinate_grid
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models.dwsnet import DWSNetEditor, from_slots, to_slots
from pipeline.models.nfn import NFNEditor
from pipeline.models.ng_gnn import NGGNNEditor
from pipeline.models.ng_t import NGTEditor
from pipeline.tasks.editing import Editing, dilate, editing_loss, render_sirens
from pipeline.train import TrainSettings, fit_model
from pipeline.weightspace.forward import ForwardSpec
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import Params, ParamSpec, flatten, permute, random_permutations, unflatten
from pipeline.zoo.kan import init_kans, kan_spec
from pipeline.zoo.siren import init_sirens, siren_forward
from tests.weightspace_cases import SIREN_LAYOUTS, random_params, rows_only, swap_inputs

B = 3
OMEGA0 = 30.0
EDITORS = {
    "dwsnet": lambda spec: DWSNetEditor(spec, hidden=8, layers=2),
    "nfn-np": lambda spec: NFNEditor(spec, hidden=8, layers=2, mode="np", fourier_features=2),
    "nfn-hnp": lambda spec: NFNEditor(spec, hidden=8, layers=2, mode="hnp"),
    "ng_gnn": lambda spec: NGGNNEditor(graph_template(spec), hidden=8, layers=3, fourier_features=2),
    "ng_gnn-probes": lambda spec: NGGNNEditor(
        graph_template(spec), hidden=8, layers=3, fourier_features=2, probe_features=4, forward_spec=_identity(spec)
    ),
    "ng_t": lambda spec: NGTEditor(graph_template(spec), hidden=8, layers=3, heads=2),
}


def _identity(spec: ParamSpec) -> ForwardSpec:
    """Probe forward pass of SIRENs whose graphs hold raw (unnormalized) parameters."""
    return ForwardSpec("sin", OMEGA0, 0.0, ((0.0, 1.0),) * spec.n_layers, ((0.0, 1.0),) * spec.n_layers)


def _edit(model: torch.nn.Module, params: Params, spec: ParamSpec) -> torch.Tensor:
    """Edited flat parameters ``(B, P)``, feeding the model the view it reads (flat or graphs)."""
    if model.input_kind == "flat":
        return model(flatten(params, spec))
    n = next(iter(params.values())).shape[0]
    graphs = GraphSet.from_params(params, graph_template(spec), torch.zeros(n), torch.arange(n))
    return model(graphs.batch(torch.arange(n)))


# --------------------------------------------------------------------------------------------
# dilation, rendering, loss
# --------------------------------------------------------------------------------------------


def test_dilation_grows_a_pixel_into_a_3x3_block():
    img = torch.zeros(2, 9, 11)
    img[0, 4, 5] = 1.0
    img[1, 0, 0] = 0.7  # a corner: the block is clipped, the size kept
    out = dilate(img)
    assert out.shape == img.shape
    expected = torch.zeros_like(img)
    expected[0, 3:6, 4:7] = 1.0  # exactly 3x3: a 5x5 (or 1x1) kernel fails here
    expected[1, 0:2, 0:2] = 0.7
    assert torch.equal(out, expected)  # a max filter: no sums, any order gives the same values


def test_dilation_is_a_grey_scale_max_filter():
    img = torch.zeros(1, 5, 5)
    img[0, 2, 1], img[0, 2, 3] = 0.3, 0.8
    out = dilate(img)
    assert float(out[0, 2, 2]) == pytest.approx(0.8)  # both in its window: the max wins
    assert float(out[0, 2, 0]) == pytest.approx(0.3)  # only the dimmer pixel in reach
    assert float(out[0, 0, 2]) == 0.0  # two rows away from both: a max of zeros


@pytest.mark.parametrize("name", list(SIREN_LAYOUTS))
def test_render_matches_siren_forward_net_by_net(name):
    spec = SIREN_LAYOUTS[name]
    flat = init_sirens(spec, [1, 2, 3], OMEGA0, "standard")
    images = render_sirens(flat, spec, OMEGA0, 0.5, height=6, width=7)
    assert images.shape == (3, 6, 7)
    coords = coordinate_grid(6, 7)
    for b in range(3):
        one = siren_forward(unflatten(flat[b : b + 1], spec), spec, coords, OMEGA0, 0.5)
        torch.testing.assert_close(images[b], one.reshape(6, 7), rtol=1e-6, atol=1e-6)


def test_render_undoes_normalization():
    spec = SIREN_LAYOUTS["siren2-16-16-1"]
    flat = init_sirens(spec, [1, 2, 3], OMEGA0, "dwsnets")
    params = unflatten(flat, spec)
    stats = fit_stats(params, spec)
    normalized = flatten(apply_stats(params, spec, stats), spec)
    torch.testing.assert_close(
        render_sirens(normalized, spec, OMEGA0, 0.5, stats=stats), render_sirens(flat, spec, OMEGA0, 0.5)
    )


def test_editing_loss_is_the_per_inr_pixel_mse():
    spec = SIREN_LAYOUTS["siren2-16-16-1"]
    flat = init_sirens(spec, [1, 2], OMEGA0, "standard")
    images = render_sirens(flat, spec, OMEGA0, 0.0)
    assert torch.allclose(editing_loss(flat, spec, images, OMEGA0, 0.0), torch.zeros(2), atol=1e-10)
    shifted = images + torch.tensor([0.1, 0.3]).view(2, 1, 1)
    torch.testing.assert_close(editing_loss(flat, spec, shifted, OMEGA0, 0.0), torch.tensor([0.01, 0.09]))


# --------------------------------------------------------------------------------------------
# editors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SIREN_LAYOUTS["siren2-8-12-6-1"], kan_spec([2, 4, 3, 1], 3, 2)], ids=["mlp", "kan"])
def test_from_slots_inverts_to_slots(spec):
    params = random_params(spec, B) if spec.family == "mlp" else init_kans(spec, [0, 1, 2])
    back = from_slots(to_slots(params, spec), spec)
    for k in spec.names:
        assert torch.equal(back[k], params[k]), k


def _editor(kind: str, spec):
    """A generic point of the editor family: O(1) position codes and update scale, no contraction."""
    torch.manual_seed(0)
    model = EDITORS[kind](spec).eval()
    with torch.no_grad():
        for p in getattr(model.encoder, "io", {}).values():
            p.normal_()
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(2.0)
        model.head.scale.fill_(1.0)  # the update, not the identity path, carries the test
    return model


@pytest.mark.parametrize("kind", list(EDITORS))
@pytest.mark.parametrize("name", list(SIREN_LAYOUTS))
def test_editor_is_equivariant_and_detects_wrong_couplings(name, kind):
    spec = SIREN_LAYOUTS[name]
    model = _editor(kind, spec)
    params = random_params(spec, B)
    if kind.endswith("probes"):  # sin(30 z) on N(0, 1) weights: float32 rounding grows ~30x per layer
        model, params = model.double(), {k: v.double() for k, v in params.items()}
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = _edit(model, params, spec)
        assert out.shape == (B, spec.n_params)
        delta = out - flatten(params, spec)
        scale = float(delta.abs().max())
        assert scale > 1e-2  # the update is not degenerate
        expected = flatten(permute(unflatten(out, spec), spec, perms), spec)
        got = _edit(model, permute(params, spec, perms), spec)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)
        for layer in spec.hidden_layers:  # an equivariant map would commute with these too: it must not
            got = _edit(model, rows_only(params, layer), spec)
            wrong = flatten(rows_only(unflatten(out, spec), layer), spec)
            assert float((got - wrong).abs().max()) > 1e-4 * scale, f"rows of layer {layer}"
        got = _edit(model, swap_inputs(params), spec)
        wrong = flatten(swap_inputs(unflatten(out, spec)), spec)
        assert float((got - wrong).abs().max()) > 1e-4 * scale


@pytest.mark.parametrize("kind", list(EDITORS))
def test_editor_starts_close_to_identity(kind):
    spec = SIREN_LAYOUTS["siren2-16-16-1"]
    torch.manual_seed(0)
    model = EDITORS[kind](spec)
    assert model.head.scale.item() == pytest.approx(1e-3)
    params = random_params(spec, B)
    flat = flatten(params, spec)
    with torch.no_grad():
        change = (_edit(model, params, spec) - flat).abs().max()
    assert 0 < float(change) < 1e-2 * float(flat.abs().max())
    with torch.no_grad():  # without the update the output is the input, entry for entry (layout round trip)
        model.head.scale.zero_()
        assert torch.equal(_edit(model, params, spec), flat)


@pytest.mark.parametrize("kind", list(EDITORS))
def test_one_gradient_step_on_the_editing_loss_reduces_it(kind):
    """Gradients flow through rendering, and are the true ones: SGD's decrease is ``lr * |g|^2``."""
    spec = SIREN_LAYOUTS["siren2-16-16-1"]
    flat = init_sirens(spec, [1, 2, 3, 4], OMEGA0, "standard").double()
    params = unflatten(flat, spec)
    stats = fit_stats(params, spec)
    inputs = apply_stats(params, spec, stats)  # what the pipeline feeds a model
    images = (torch.rand(4, 14, 14, generator=torch.Generator().manual_seed(0)) > 0.8).double()
    targets = dilate(images)  # far from what the untrained INRs show: a loss well above zero
    torch.manual_seed(0)
    model = EDITORS[kind](spec).double()  # float64: the first step moves the loss by ~1e-8
    lr = 1e-4  # small enough that the probes' sin(30 z) curvature stays second order
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def loss() -> torch.Tensor:
        return editing_loss(_edit(model, inputs, spec), spec, targets, OMEGA0, 0.5, stats).mean()

    before = loss()
    opt.zero_grad()
    before.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, name
    predicted = lr * sum(float(p.grad.square().sum()) for p in model.parameters())
    opt.step()
    with torch.no_grad():
        decrease = float(before) - float(loss())
    assert 0.5 * predicted < decrease < 1.5 * predicted, (decrease, predicted)


def test_fit_model_selects_the_lowest_validation_editing_mse():
    """The editing objective is minimized: the reported epoch has the lowest validation MSE, its
    test MSE is the one evaluated then, and training lowers the MSE of the unedited INRs."""
    spec = SIREN_LAYOUTS["siren2-16-16-1"]
    template = graph_template(spec)
    flat = init_sirens(spec, list(range(48)), OMEGA0, "standard")
    params = unflatten(flat, spec)
    stats = fit_stats(params, spec)
    images = (torch.rand(48, 12, 12, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    norm = apply_stats(params, spec, stats)

    def split(lo: int, hi: int) -> GraphSet:
        sub = {k: v[lo:hi] for k, v in norm.items()}
        return GraphSet.from_params(sub, template, dilate(images[lo:hi]), torch.arange(lo, hi))

    train, val, test = split(0, 32), split(32, 40), split(40, 48)
    objective = Editing(spec, OMEGA0, 0.0, stats)
    assert not objective.maximize and objective.select == "mse"
    torch.manual_seed(0)
    model = NGGNNEditor(template, hidden=8, layers=3, fourier_features=2, init_scale=0.1)
    seen = []
    res = fit_model(
        model, train, val, test, TrainSettings(6, 8, 1e-2, 0.0, 1, 10.0), 0, objective, on_best=lambda m: seen.append(1)
    )
    val_mse = [h["val_mse"] for h in res.history]
    assert res.best_epoch == 1 + val_mse.index(min(val_mse)) and res.best_val == min(val_mse)
    assert len(seen) == len({h["test_mse_at_best_val"] for h in res.history}) >= 1
    unedited = objective.metrics(flatten(test.to_params(template), spec), test.y)["mse"]
    assert res.test["mse"] < unedited
