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
import types

import pytest
import torch

import pipeline.models as registry
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models import build_editor, build_model, model_module, model_names, split_model_name
from pipeline.report.adaptation import NO_ADAPTATION
from pipeline.report.common import published, published_results
from pipeline.train import data_shape, model_inputs
from pipeline.weightspace.forward import ForwardSpec
from pipeline.weightspace.spec import flatten, permute, random_permutations, unflatten
from tests.weightspace_cases import SIREN_LAYOUTS, random_params, rows_only, swap_inputs

B = 3
NOT_INVARIANT = {"mlp"}  # the flattened-parameter baseline (tests/test_symmetry.py shows it is not)
# per-tensor statistics are symmetric in every entry: StatNN is blind to wiring by design (the
# paper's point), so a wrong coupling that keeps each tensor's entries cannot change its output
BLIND_TO_WIRING = {"statnn"}
SMALL = {"hidden": 16, "layers": 4, "heads": 2, "probe_features": 4}  # probes on: NG-GNN and NG-T use them


# the reference codes' choices, where they differ from the defaults (docs/methods.md "Reference-faithful
# settings"); batch norm runs in training mode, on batch statistics
REFERENCE = {
    "dwsnet": {"reduction": "max", "norm": "batch", "head_width": 40, "set_heads": 2},
    "nfn": {"io_scale": 1.0, "head_pool": "hidden", "head_width": 40, "fourier_features": 4},
    "ng_gnn": {"probe_projection": True},
    "ng_t": {"probe_projection": True, "attention": "all_pairs"},
}


def _settings(name: str, over: dict | None = None):
    defaults = model_module(name).Settings()
    return dataclasses.replace(defaults, **{k: v for k, v in (SMALL | (over or {})).items() if hasattr(defaults, k)})


def _setup(name: str, spec, editor: bool = False, over: dict | None = None):
    params = {k: v.double() for k, v in random_params(spec, B, seed=3).items()}
    template = graph_template(spec)
    gs = GraphSet.from_params(params, template, torch.zeros(B), torch.arange(B))
    fwd = ForwardSpec("sin", 30.0, 0.0, ((0.0, 1.0),) * spec.n_layers, ((0.0, 1.0),) * spec.n_layers)
    shape = data_shape(gs, template, n_classes=5, forward_spec=fwd)
    torch.manual_seed(0)
    s = _settings(name, over)
    model = build_editor(name, s, shape, init_scale=1.0) if editor else build_model(name, s, shape)
    model = model.double().train(getattr(s, "norm", "none") == "batch")
    kind = model_module(name).INPUT_KIND
    assert model.input_kind == kind  # the module's declaration (config checks) and the model's agree

    def run(p):
        g = GraphSet.from_params(p, template, torch.zeros(B), torch.arange(B))
        with torch.no_grad():
            return model(model_inputs(g, template, kind).batch(torch.arange(B)))

    return params, run


PREDICTORS = [m for m in model_names() if m not in NOT_INVARIANT]
EDITORS = [m for m in model_names() if hasattr(model_module(m), "build_editor") and m not in NOT_INVARIANT]
# (case id, model, settings): every model with its defaults, and the reference-faithful variants
# the paper's ablation (probes on: they tell the input neurons apart, so swapped inputs still count)
ABLATIONS = {"ng_gnn": {"positional": False}}
PREDICTOR_CASES = (
    [(m, m, {}) for m in PREDICTORS]
    + [(f"{m}-reference", m, over) for m, over in REFERENCE.items()]
    + [(f"{m}-ablation", m, over) for m, over in ABLATIONS.items()]
)
EDITOR_CASES = (
    [(m, m, {}) for m in EDITORS]
    + [(f"{m}-reference", m, over) for m, over in REFERENCE.items()]
    + [(f"{m}-ablation", m, over) for m, over in ABLATIONS.items()]
)


def test_registry_finds_every_model_of_the_papers():
    assert {"mlp", "statnn", "deepsets", "dwsnet", "nfn", "ng_gnn", "ng_t", "ws_kan"} <= set(model_names())
    assert {"dwsnet", "nfn", "ng_gnn", "ng_t"} <= set(EDITORS)
    assert hasattr(model_module("mlp"), "build_editor")  # the flat baseline edits too: not equivariant


@pytest.mark.parametrize("layout", SIREN_LAYOUTS)
@pytest.mark.parametrize(("name", "over"), [c[1:] for c in PREDICTOR_CASES], ids=[c[0] for c in PREDICTOR_CASES])
def test_predictor_invariant_and_detects_wrong_couplings(name, over, layout):
    spec = SIREN_LAYOUTS[layout]
    params, run = _setup(name, spec, over=over)
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
def test_ng_gnn_without_positional_embeddings_loses_the_input_order_only(layout):
    """Without positional embeddings (and probes) NG-GNN still reads the hidden wiring, but the
    input neurons become interchangeable: swapping them no longer changes the output."""
    spec = SIREN_LAYOUTS[layout]
    params, run = _setup("ng_gnn", spec, over={"positional": False, "probe_features": 0})
    ref = run(params)
    spread = float((ref - ref.mean(0)).abs().max())
    assert spread > 1e-9
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    torch.testing.assert_close(run(permute(params, spec, perms)), ref, rtol=1e-5, atol=1e-6 * spread)
    for layer in spec.hidden_layers:
        assert (run(rows_only(params, layer)) - ref).abs().max() > 1e-5 * spread
    torch.testing.assert_close(run(swap_inputs(params)), ref, rtol=1e-10, atol=1e-10 * spread)
    params, run = _setup("ng_gnn", spec, over={"probe_features": 0})  # with them, the order counts
    assert (run(swap_inputs(params)) - run(params)).abs().max() > 1e-5 * spread


@pytest.mark.parametrize("layout", SIREN_LAYOUTS)
@pytest.mark.parametrize(("name", "over"), [c[1:] for c in EDITOR_CASES], ids=[c[0] for c in EDITOR_CASES])
def test_editor_equivariant_and_detects_wrong_couplings(name, over, layout):
    spec = SIREN_LAYOUTS[layout]
    params, run = _setup(name, spec, editor=True, over=over)
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


# Reports: labels, variants and published numbers come from the model modules and the data file.


@pytest.mark.parametrize("name", model_names())
def test_every_model_declares_its_report_label(name):
    mod = model_module(name)
    assert isinstance(mod.LABEL, str) and mod.LABEL
    assert isinstance(mod.REPORT_ORDER, int)
    # the variant hook accepts the model's own default settings, as a run records them
    assert isinstance(registry.variant_key(name, dataclasses.asdict(mod.Settings())), str)


def test_every_published_number_names_a_known_model():
    from pipeline.tasks.l2o import BASELINES, LEARNED

    tables = published_results()
    assert {"inr_classification", "inr_editing", "kan_inr", "kan_classifier"} <= set(tables)
    for task, table in tables.items():
        if task == "claims":  # the papers' orderings: tests/test_report.py
            continue
        for key, entry in table.items():
            if key == NO_ADAPTATION:  # the unadapted nets of domain adaptation
                continue
            if task == "learning_to_optimize":  # optimizers, not metanetworks of the registry
                assert key in LEARNED + BASELINES, f"{task}: {key}"
            else:
                base, _ = split_model_name(key.split("+")[0])
                assert base in model_names(), f"{task}: {key}"
            assert isinstance(entry["value"], str) and isinstance(entry["source"], str), f"{task}: {key}"


def test_variants_pick_labels_and_published_numbers():
    cases = {  # (model, settings) -> (published key, label)
        ("nfn", ("mode", "hnp")): ("nfn+hnp", "NFN (HNP)"),
        ("nfn", ("mode", "np")): ("nfn+np", "NFN (NP)"),
        ("ng_t", ("probe_features", 64)): ("ng_t+probes", "NG-T (64 probe features)"),
        ("ng_gnn", ("probe_features", 0)): ("ng_gnn", "NG-GNN"),
        ("ng_gnn", ("positional", False)): ("ng_gnn+no_pos", "NG-GNN (no positional embeddings)"),
        ("ng_gnn@probes", ("probe_features", 16)): ("ng_gnn+probes", "NG-GNN (16 probe features)"),
        ("ng_t_perm@wide", ("hidden", 8)): ("ng_t_perm", "NG-T + permutation augmentation"),
        ("mlp_perm", ("hidden", 8)): ("mlp_perm", "MLP + permutation augmentation"),
        ("dwsnet_perm", ("hidden", 8)): ("dwsnet_perm", "DWSNet + permutation augmentation"),
        ("ng_gnn_perm", ("probe_features", 4)): (
            "ng_gnn_perm+probes",
            "NG-GNN + permutation augmentation (4 probe features)",
        ),
    }
    for (name, (k, v)), (key, label) in cases.items():
        assert (registry.variant_key(name, {k: v}), registry.model_label(name, {k: v})) == (key, label)
    assert published("inr_classification", "nfn+np") == "92.9 (NFN's SIRENs)"
    assert published("inr_editing", "ng_t+probes") == "1.75 (64 probes)"
    assert published("inr_classification", "statnn") == "–"
    assert published("no_such_task", "mlp") == "–"


def test_a_new_modules_variant_needs_no_report_code(monkeypatch):
    """A dummy model with a variant but no ``variant_label``: the variant key is shown as is."""
    dummy = types.SimpleNamespace(LABEL="Dummy net", variant=lambda s: "wide" if s["width"] > 8 else "")
    real = registry.model_module
    monkeypatch.setattr(registry, "model_module", lambda n: dummy if n.startswith("dummy") else real(n))
    assert registry.variant_key("dummy", {"width": 16}) == "dummy+wide"
    assert registry.variant_key("dummy_perm", {"width": 4}) == "dummy_perm"
    assert registry.model_label("dummy", {"width": 16}) == "Dummy net (wide)"
    assert registry.model_label("dummy_perm", {"width": 16}) == "Dummy net + permutation augmentation (wide)"
    names = ["dummy", "ws_kan", "ng_gnn@probes", "ng_gnn_perm", "mlp_perm", "ng_gnn", "statnn", "mlp", "mlp"]
    order = registry.report_order(names)
    assert order == ["mlp", "mlp_perm", "statnn", "ng_gnn", "ng_gnn@probes", "ng_gnn_perm", "ws_kan", "dummy"]
