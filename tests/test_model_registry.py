"""Every registered metanetwork, found by name: invariant predictors, equivariant editors.

Runs over :func:`pipeline.models.model_names`, so a new model module is checked without
touching this file: on two SIREN layouts (two equal hidden layers; three hidden layers of
different widths) each predictor gives the same output (1e-5 relative) under random per-net
hidden-neuron permutations, and a different one under wrongly coupled permutations (rows of
one hidden layer without the matching columns; swapped input neurons); each editor's output
permutes with its input. The flat MLP is the documented exception (not invariant).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models import build_editor, build_model, model_module, model_names
from pipeline.models.probes import ForwardSpec
from pipeline.train import data_shape, model_inputs
from pipeline.weightspace.spec import flatten, permute, random_permutations, unflatten
from tests.weightspace_cases import SIREN_LAYOUTS, random_params, rows_only, swap_inputs

B = 3
NOT_INVARIANT = {"mlp"}  # the flattened-parameter baseline (tests/test_symmetry.py shows it is not)
# per-tensor statistics are symmetric in every entry: StatNN is blind to wiring by design (the
# paper's point), so a wrong coupling that keeps each tensor's entries cannot change its output
BLIND_TO_WIRING = {"statnn"}
SMALL = {"hidden": 16, "layers": 4, "heads": 2, "probe_features": 4}  # probes on: NG-GNN and NG-T use them


def _settings(name: str):
    defaults = model_module(name).Settings()
    return dataclasses.replace(defaults, **{k: v for k, v in SMALL.items() if hasattr(defaults, k)})


def _setup(name: str, spec, editor: bool = False):
    params = {k: v.double() for k, v in random_params(spec, B, seed=3).items()}
    template = graph_template(spec)
    gs = GraphSet.from_params(params, template, torch.zeros(B), torch.arange(B))
    fwd = ForwardSpec("sin", 30.0, 0.0, ((0.0, 1.0),) * spec.n_layers, ((0.0, 1.0),) * spec.n_layers)
    shape = data_shape(gs, template, n_classes=5, forward_spec=fwd)
    torch.manual_seed(0)
    s = _settings(name)
    model = build_editor(name, s, shape, init_scale=1.0) if editor else build_model(name, s, shape)
    model = model.double().eval()
    kind = model_module(name).INPUT_KIND
    assert model.input_kind == kind  # the module's declaration (config checks) and the model's agree

    def run(p):
        g = GraphSet.from_params(p, template, torch.zeros(B), torch.arange(B))
        with torch.no_grad():
            return model(model_inputs(g, template, kind).batch(torch.arange(B)))

    return params, run


PREDICTORS = [m for m in model_names() if m not in NOT_INVARIANT]
EDITORS = [m for m in model_names() if hasattr(model_module(m), "build_editor")]


def test_registry_finds_every_model_of_the_papers():
    assert {"mlp", "statnn", "deepsets", "dwsnet", "nfn", "ng_gnn", "ng_t", "ws_kan"} <= set(model_names())
    assert {"dwsnet", "nfn", "ng_gnn", "ng_t"} <= set(EDITORS)


@pytest.mark.parametrize("layout", SIREN_LAYOUTS)
@pytest.mark.parametrize("name", PREDICTORS)
def test_predictor_invariant_and_detects_wrong_couplings(name, layout):
    spec = SIREN_LAYOUTS[layout]
    params, run = _setup(name, spec)
    ref = run(params)
    assert ref.shape == (B, 5)
    # how much the output moves between different nets: the scale of a detectable change (an
    # untrained model may be nearly constant; float64 keeps the permutation error ~1e-15)
    spread = float((ref - ref.mean(0)).abs().max())
    assert spread > 1e-9
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    torch.testing.assert_close(run(permute(params, spec, perms)), ref, rtol=1e-5, atol=1e-6 * spread)
    wrong = [run(rows_only(params, layer)) for layer in spec.hidden_layers] + [run(swap_inputs(params))]
    for k, out in enumerate(wrong):
        what = "swapped input neurons" if k == len(wrong) - 1 else f"rows of hidden layer {spec.hidden_layers[k]}"
        if name in BLIND_TO_WIRING:
            torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12, msg=what)
        else:
            assert (out - ref).abs().max() > 1e-5 * spread, what


@pytest.mark.parametrize("layout", SIREN_LAYOUTS)
@pytest.mark.parametrize("name", EDITORS)
def test_editor_equivariant_and_detects_wrong_couplings(name, layout):
    spec = SIREN_LAYOUTS[layout]
    params, run = _setup(name, spec, editor=True)
    edited = run(params)
    assert edited.shape == (B, spec.n_params)
    delta = float((edited - flatten(params, spec)).abs().max())
    assert delta > 1e-3  # the update, not the identity path, carries the test
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    got = run(permute(params, spec, perms))
    expected = flatten(permute(unflatten(edited, spec), spec, perms), spec)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * delta)
    wrong = rows_only(params, spec.hidden_layers[0])
    assert (run(wrong) - flatten(wrong, spec) - (edited - flatten(params, spec))).abs().max() > 1e-6
