"""DeepSets over hidden neurons: element layout, invariance, wrong couplings."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.deepsets import DeepSets, element_width, fixed_tensors, neuron_elements
from pipeline.weightspace.spec import flatten, permute, random_permutations
from tests.weightspace_cases import SIREN_LAYOUTS, random_params, rows_only, swap_inputs

B = 3


def test_elements_are_row_bias_column_with_hidden_neighbours_sorted():
    spec = SIREN_LAYOUTS["siren2-8-12-6-1"]
    params = random_params(spec, B)
    u1 = neuron_elements(params, spec, 1)  # inputs -> 1 -> hidden layer 2: the column is sorted
    assert u1.shape == (B, 8, element_width(spec, 1)) == (B, 8, 2 + 1 + 12)
    torch.testing.assert_close(u1[:, :, :2], params["layers.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(u1[:, :, 2], params["layers.0.bias"], rtol=0, atol=0)
    torch.testing.assert_close(u1[:, :, 3:], params["layers.1.weight"].transpose(1, 2).sort(dim=2).values)
    u3 = neuron_elements(params, spec, 3)  # hidden layer 2 -> 3 -> output: the column keeps its order
    assert u3.shape == (B, 6, 12 + 1 + 1)
    torch.testing.assert_close(u3[:, :, :12], params["layers.2.weight"].sort(dim=2).values)
    torch.testing.assert_close(u3[:, :, 13], params["layers.3.weight"][:, 0, :], rtol=0, atol=0)
    assert fixed_tensors(spec) == ("layers.3.bias",)


@pytest.mark.parametrize("name", list(SIREN_LAYOUTS))
def test_deepsets_is_invariant_and_detects_wrong_couplings(name):
    spec = SIREN_LAYOUTS[name]
    torch.manual_seed(0)
    model = DeepSets(spec, n_classes=4, hidden=16, layers=2).eval()
    params = random_params(spec, B)
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(flatten(params, spec))
        assert ref.shape == (B, 4)
        scale = float(ref.abs().max())
        out = model(flatten(permute(params, spec, perms), spec))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)
        for layer in spec.hidden_layers:
            wrong = model(flatten(rows_only(params, layer), spec))
            assert float((wrong - ref).abs().max()) > 1e-4 * scale, f"rows of layer {layer}"
        assert float((model(flatten(swap_inputs(params), spec)) - ref).abs().max()) > 1e-4 * scale


def test_deepsets_trains():
    spec = SIREN_LAYOUTS["siren2-16-16-1"]
    torch.manual_seed(0)
    model = DeepSets(spec, n_classes=2, hidden=16)
    flat = flatten(random_params(spec, 8), spec)
    y = torch.arange(8) % 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(flat), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
