"""pykan interchange: export / import agree with pykan's own forward, and the symmetry survives it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.weightspace.spec import permute, random_permutations
from pipeline.zoo.kan import init_kans, kan_forward, kan_spec
from pipeline.zoo.pykan_io import from_pykan, pykan_forward, quiet_pykan, to_pykan

kan = pytest.importorskip("kan")

# (layer sizes, G, k)
KAN_LAYOUTS = [([2, 5, 1], 5, 3), ([3, 4, 6, 2], 3, 2)]
KAN_IDS = ["2-5-1_G5k3", "3-4-6-2_G3k2"]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pykan runs in an empty cwd (it would write ``./model`` or ``./video`` there if it wrote anything)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def perturbed_kans(sizes, grid_size, order, n_nets=3, seed=0):
    """Freshly initialized KANs with noise on every tensor (knots jittered per node, kept sorted)."""
    spec = kan_spec(sizes, grid_size, order)
    params = init_kans(spec, list(range(seed, seed + n_nets)))
    g = torch.Generator().manual_seed(seed + 100)
    out = {}
    for name, value in params.items():
        noise = torch.randn(value.shape, generator=g)
        if name.endswith(".grid"):
            out[name] = torch.sort(value + 0.03 * noise, dim=-1).values
        else:
            out[name] = value + 0.3 * noise
    return spec, out


def random_inputs(n_in: int, n: int = 256, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_in, generator=g) * 3.0 - 1.5  # also outside the initial grid [-1, 1]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize(("sizes", "grid_size", "order"), KAN_LAYOUTS, ids=KAN_IDS)
def test_export_matches_our_forward(sizes, grid_size, order):
    spec, params = perturbed_kans(sizes, grid_size, order)
    x = random_inputs(sizes[0])
    ours = kan_forward(params, spec, x)
    for index in (0, 2):
        model = to_pykan(params, spec, index)
        assert isinstance(model, kan.KAN)
        out = pykan_forward(model, x)
        assert out.shape == (x.shape[0], sizes[-1])
        assert ours[index].abs().max() > 0.1  # not a trivial function
        assert max_diff(out, ours[index]) < TOL


@pytest.mark.parametrize(("sizes", "grid_size", "order"), KAN_LAYOUTS, ids=KAN_IDS)
def test_round_trip_is_exact(sizes, grid_size, order):
    spec, params = perturbed_kans(sizes, grid_size, order)
    back, back_spec = from_pykan(to_pykan(params, spec, 1))
    assert back_spec == spec
    assert list(back) == list(spec.names)
    for name in spec.names:
        assert back[name].shape == (1, *spec.tensor(name).shape)
        # to_pykan writes unit masks and scales: from_pykan's folding multiplies by exactly 1
        torch.testing.assert_close(back[name][0], params[name][1], atol=0, rtol=0)


def test_import_of_pykan_trained_model(_in_tmp: Path):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 2, generator=g) * torch.tensor([2.0, 1.0]) + torch.tensor([-1.0, 0.2])  # different ranges
    y = torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2
    dataset = {"train_input": x[:48], "train_label": y[:48], "test_input": x[48:], "test_label": y[48:]}
    with quiet_pykan():
        model = kan.KAN(width=[2, 3, 1], grid=4, k=3, seed=0, auto_save=False)
        initial = [model.act_fun[l].grid.detach().clone() for l in range(2)]
        model.fit(
            dataset,
            opt="Adam",
            steps=20,
            lr=0.01,
            update_grid=True,
            grid_update_num=2,
            stop_grid_update_step=15,
            log=1000,
            save_fig=False,
        )
    for l in range(2):
        grid = model.act_fun[l].grid.detach()
        assert max_diff(grid, initial[l]) > 1e-2  # the knots really moved
        assert max_diff(grid[0], grid[1]) > 1e-2  # and differ between source nodes

    before = {k: v.clone() for k, v in model.state_dict().items()}
    params, spec = from_pykan(model)
    assert spec.layer_sizes == (2, 3, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    torch.testing.assert_close(params["layers.0.grid"][0], model.act_fun[0].grid.detach(), atol=0, rtol=0)

    x_eval = random_inputs(2)
    assert max_diff(kan_forward(params, spec, x_eval)[0], pykan_forward(model, x_eval)) < TOL
    assert not (_in_tmp / "model").exists() and not (_in_tmp / "video").exists()


def folded_model():
    """A pykan [2, 3, 2] KAN with a fractional / zero mask and non-unit node and subnode scales."""
    with quiet_pykan():
        model = kan.KAN(width=[2, 3, 2], grid=5, k=3, seed=1, auto_save=False)
    with torch.no_grad():
        model.act_fun[0].mask.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.3, 1.0, 1.0]]))
        model.act_fun[1].mask.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.7], [1.0, 1.0]]))
        model.node_scale_0.copy_(torch.tensor([0.5, 2.0, -1.0]))
        model.subnode_scale_0.copy_(torch.tensor([1.5, 0.7, 1.2]))
        model.node_scale_1.copy_(torch.tensor([-0.8, 1.3]))
        model.subnode_scale_1.copy_(torch.tensor([2.0, 0.4]))
    return model


def test_mask_and_node_scales_are_folded():
    model = folded_model()
    params, spec = from_pykan(model)
    x = random_inputs(2)
    assert max_diff(kan_forward(params, spec, x)[0], pykan_forward(model, x)) < TOL
    assert params["layers.0.scale_base"][0, 1, 0] == 0  # mask 0 of edge 0 -> 1
    assert model.node_scale_0[0] == 0.5  # not mutated


@pytest.mark.parametrize(
    ("tensor", "index"),
    [("node_bias_0", 1), ("subnode_bias_1", 0), ("symbolic_fun.1.mask", (0, 2))],
)
def test_unrepresentable_tensors_are_refused(tensor, index):
    model = folded_model()
    with torch.no_grad():
        model.state_dict()[tensor][index] = 0.1
    with pytest.raises(ValueError, match=f"'{tensor}'"):
        from_pykan(model)


def test_multiplication_nodes_are_refused():
    with quiet_pykan():
        model = kan.KAN(width=[2, [3, 1], 1], grid=3, k=3, auto_save=False)
    with pytest.raises(ValueError, match=r"width\[1\]"):
        from_pykan(model)


@pytest.mark.parametrize(("sizes", "grid_size", "order"), KAN_LAYOUTS, ids=KAN_IDS)
def test_hidden_permutation_symmetry_survives_export(sizes, grid_size, order):
    spec, params = perturbed_kans(sizes, grid_size, order)
    index = 1
    x = random_inputs(sizes[0])
    reference = pykan_forward(to_pykan(params, spec, index), x)

    perms = random_permutations(spec, 3, torch.Generator().manual_seed(5))
    assert any(not torch.equal(p[index], torch.arange(p.shape[1])) for p in perms.values())
    permuted = permute(params, spec, perms)
    assert max_diff(permuted["layers.0.coef"][index], params["layers.0.coef"][index]) > 0
    assert max_diff(pykan_forward(to_pykan(permuted, spec, index), x), reference) < TOL

    # wrong coupling: hidden layer 1's incoming rows move, its outgoing columns and knots don't
    cycle = torch.roll(torch.arange(sizes[1]), 1)
    wrong = dict(params)
    for name in ("coef", "scale_base", "scale_sp"):
        wrong[f"layers.0.{name}"] = params[f"layers.0.{name}"][:, cycle]
    assert max_diff(pykan_forward(to_pykan(wrong, spec, index), x), reference) > 1e-3

    # permuting the inputs is no symmetry
    inputs = permute(params, spec, {0: torch.roll(torch.arange(sizes[0]), 1)})
    assert max_diff(pykan_forward(to_pykan(inputs, spec, index), x), reference) > 1e-3


def test_export_leaves_rng_and_cwd_alone(_in_tmp: Path):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    spec, params = perturbed_kans([2, 5, 1], 5, 3, n_nets=1)
    to_pykan(params, spec)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert random.getstate() == python_state
    assert not (_in_tmp / "model").exists()
    assert list(_in_tmp.iterdir()) == []
