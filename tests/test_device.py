"""Device hygiene of the training loop and the zoo fitters, without a GPU.

The ``meta`` device has shapes but no data: a tensor created on a fixed device next to it, or a
value read back to the host (``.item()``, ``bool(t)``), fails here as it would cost a GPU run a
wait (or a crash). Every metanetwork's forward and backward on meta: ``test_device_models.py``.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.data import coordinate_grid
from pipeline.device import resolve_device
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models import build_model, settings_type
from pipeline.optim import AdamSettings, adam_update, adam_update_one_lr
from pipeline.runs import GraphData
from pipeline.train import Classification, FlatSet, data_shape, forward_spec_from_meta, model_inputs, train_step
from pipeline.weightspace.spec import ParamSpec
from pipeline.zoo import kan, siren
from pipeline.zoo.kan_zoo import GRID_RANGE
from tests.conftest import REPO, write_tiny_graphs

META = torch.device("meta")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("meta") == META
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="ray.device: cuda"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", ["mlp", "statnn", "dwsnet", "ng_gnn", "ng_t"])
def test_one_training_step_runs_on_the_meta_device(name, tmp_path):
    """``train_step`` (forward, loss, backward, clipping, AdamW) with model and split on meta."""
    data = GraphData.load(write_tiny_graphs(tmp_path / "graphs"))
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    shape = data_shape(data.splits["train"], template, 10, forward_spec_from_meta(data.meta))
    settings = settings_type(name)()
    if hasattr(settings, "probe_features"):
        settings = type(settings)(**{**settings.__dict__, "probe_features": 2})
    model = build_model(name, settings, shape).to(META)
    train = model_inputs(data.splits["train"], template, model.input_kind).to(META)
    assert isinstance(train, FlatSet | GraphSet)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.arange(8, device=META)
    out, loss = train_step(model, train.batch(idx), train.y[idx], Classification(10), opt, 10.0)
    assert out.device == META and out.shape == (8, 10) and loss.device == META


def test_one_siren_fitting_step_runs_on_the_meta_device():
    spec = siren.siren_spec([16, 16])
    settings = siren.FitSettings(steps=1, lr=1e-3, omega0=30.0, variant="standard", target_psnr=50.0)
    coords = coordinate_grid(8, 8).to(META)
    model = siren._BatchedSiren(spec, coords, settings.omega0, 0.0)
    theta = siren.init_sirens(spec, [1, 2, 3], settings.omega0, "standard").to(META)
    m, v, grad = torch.zeros_like(theta), torch.zeros_like(theta), torch.empty_like(theta)
    mse = model.loss_and_grad(theta, torch.empty(3, 64, 1, device=META), grad)
    adam_update_one_lr(theta, grad, m, v, 1, settings.lr, settings.betas, settings.eps)
    assert mse.device == META and theta.device == META and mse.shape == (3,)


def test_one_kan_fitting_step_runs_on_the_meta_device():
    spec = kan.kan_spec([2, 4, 1], 5, 3)
    params = {k: v.to(META) for k, v in kan.init_kans(spec, [1, 2], grid_range=GRID_RANGE).items()}
    names = [t.name for t in spec.tensors if t.name.rsplit(".", 1)[1] in kan.TRAINABLE]
    flat = torch.cat([params[n].reshape(2, -1) for n in names], dim=1).requires_grad_(True)
    sizes = [params[n][0].numel() for n in names]
    current = dict(params) | {n: p.view_as(params[n]) for n, p in zip(names, flat.split(sizes, 1), strict=True)}
    coords = coordinate_grid(4, 4).to(META)
    loss = kan.kan_forward(current, spec, coords, uniform=GRID_RANGE).square().mean(dim=(1, 2))
    (g,) = torch.autograd.grad(loss.sum(), [flat])
    with torch.no_grad():
        m, v = torch.zeros_like(flat), torch.zeros_like(flat)
        lr = torch.full((2,), 1e-2, device=META)
        adam_update(flat, g, m, v, 1, lr, AdamSettings(1), torch.zeros(2, 1, device=META))
    assert flat.device == META and loss.shape == (2,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_gpu_runs_with_one_seed_agree_within_the_stated_tolerance(tmp_path):
    """docs/cluster.md: GPU runs with the same seed agree to float32 rounding (rtol 1e-4), not bytes."""
    from pipeline.runs import GraphData, TaskContext
    from pipeline.tasks.job import fit_job
    from pipeline.tasks.prediction import PREDICTION

    images = torch.rand(64, 28, 28, generator=torch.Generator().manual_seed(0))
    settings = siren.FitSettings(steps=50, lr=5e-4, omega0=30.0, variant="standard", target_psnr=200.0)
    spec = siren.siren_spec([32, 32])
    a, b = (siren.fit_sirens(images, list(range(64)), spec, settings, device="cuda") for _ in range(2))
    torch.testing.assert_close(a.params, b.params, rtol=1e-4, atol=1e-5)
    data = GraphData.load(write_tiny_graphs(tmp_path / "graphs"))
    from pipeline.config import load_params
    from pipeline.train import TrainSettings

    tc = load_params(REPO / "params.yaml").train
    runs = [
        fit_job(
            data,
            "ng_gnn",
            tc.settings("ng_gnn"),
            0,
            TaskContext("k", 1, "cuda"),
            TrainSettings(3, 16, 1e-3, 0, 2, 10.0),
            "none",
            PREDICTION,
        )
        for _ in range(2)
    ]
    for ra, rb in zip(runs[0]["history"], runs[1]["history"], strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)


def _fit_tiny(tmp_path, name: str, compile: bool, device: str = "cpu") -> tuple[dict, torch.nn.Module]:
    """Two epochs of ``name`` (width 8) on the tiny graphs, eager or compiled."""
    from pipeline.train import TrainSettings, fit_model

    data = GraphData.load(write_tiny_graphs(tmp_path / "graphs"))
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    shape = data_shape(data.splits["train"], template, 10, forward_spec_from_meta(data.meta))
    settings = settings_type(name)(hidden=8)
    torch.manual_seed(0)
    model = build_model(name, settings, shape)
    sets = [model_inputs(data.splits[s], template, model.input_kind) for s in ("train", "val", "test")]
    fit = TrainSettings(2, 16, 1e-3, 0.0, 2, 10.0, compile=compile)
    return fit_model(model, *sets, fit, 0, Classification(10), device=device), model


@pytest.mark.slow
def test_a_compiled_model_trains_as_the_eager_one_to_float32_rounding(tmp_path):
    """``train.compile: true`` (inductor on the CPU): the same losses, accuracies and weights as the
    eager run to float32 rounding, the same ``state_dict`` keys (a compiled run's model file loads
    into an eager model), and the model really ran compiled."""
    eager, _ = _fit_tiny(tmp_path / "a", "ng_gnn", False)
    compiled, model = _fit_tiny(tmp_path / "b", "ng_gnn", True)
    assert model._compiled_call_impl is not None  # nn.Module.compile() took effect
    assert compiled.best_state.keys() == eager.best_state.keys()
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    for k, v in eager.best_state.items():
        torch.testing.assert_close(compiled.best_state[k], v, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_compiled_model_with_cuda_graphs_trains_as_the_eager_one(tmp_path):
    """On CUDA a graph set of one template compiles with CUDA graphs (``reduce-overhead``)."""
    eager, _ = _fit_tiny(tmp_path / "a", "ng_gnn", False, "cuda")
    compiled, _ = _fit_tiny(tmp_path / "b", "ng_gnn", True, "cuda")
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
