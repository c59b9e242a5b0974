"""KAN zoos: the fast uniform-knot splines, per-net training, the classifier task, and the stages."""

from __future__ import annotations

import hashlib
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipeline.augment import permute_flat
from pipeline.train import Regression
from pipeline.weightspace.spec import flatten, unflatten
from pipeline.zoo.kan import (
    TRAINABLE,
    AdamSettings,
    b_splines,
    init_kans,
    kan_forward,
    kan_spec,
    spline_kernel,
    train_kans,
    uniform_b_splines,
    uniform_grid,
    uniform_spline_part,
)
from pipeline.zoo.kan_zoo import (
    ClassifierRanges,
    InrFit,
    digits_task,
    draw_hyper,
    fit_kan_classifiers,
    fit_kan_inrs,
    load_kan_zoo,
)
from tests.conftest import assert_close_to_scale, run_stage, write_params

GRID = (-1.0, 1.0)
RANGES = ClassifierRanges(
    lr=(1e-3, 1e-1), weight_decay=(1e-5, 1e-1), steps=(50, 100, 200), label_noise=(0.0, 0.5), train_fraction=(0.05, 1.0)
)


def _trainable(params):
    return {n: v for n, v in params.items() if n.rsplit(".", 1)[1] in TRAINABLE}


def _net(params, b: int):
    return {n: v[b] for n, v in params.items()}


def _assert_net_close(p, q, rel=1e-3):
    """One net trained in two batches (other partners, another batch size: batched products may
    sum in another order on another CPU): float32 drift only. Over these <= 10 Adam steps it
    reaches ~5e-5 of a tensor's scale (spline coefficients) when every product is off by one ulp;
    training moves the tensors by 0.2 to 0.8 of it."""
    assert p.keys() == q.keys()
    for n in p:
        assert_close_to_scale(p[n], q[n], rel, n)


# --- splines -----------------------------------------------------------------------------


@pytest.mark.parametrize(("G", "k"), [(5, 3), (3, 2), (4, 1)])
def test_uniform_b_splines_match_general_b_splines_values_and_gradients(G: int, k: int):
    n = 3
    gen = torch.Generator().manual_seed(G * 10 + k)
    x = (torch.rand(1, 400, n, generator=gen, dtype=torch.float64) * 3.2 - 1.6).requires_grad_(True)
    grid = uniform_grid(n, G, k).double().unsqueeze(0)  # (1, n, G + 2k + 1)
    if k == 1:  # knots on [-1.5, 1.5]: some inputs must fall outside them
        assert ((x < grid[0, 0, 0]) | (x >= grid[0, 0, -1])).any()

    ref = b_splines(x, grid, k)  # (1, N, n, G + k)
    fast = uniform_b_splines(x, -1.0, 1.0, G, k)  # (1, N, n, G + k + 2)
    assert fast.shape == (*x.shape, G + k + 2)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(fast[..., 1:-1], ref, atol=1e-6, rtol=0)

    w = torch.randn(G + k, generator=gen, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    (g_fast,) = torch.autograd.grad((fast[..., 1:-1] * w).sum(), x)
    assert g_ref.abs().max() > 0.1
    torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=0)


def test_kan_forward_uniform_path_matches_general_path():
    spec = kan_spec([2, 8, 8, 1], 5, 3)
    params = init_kans(spec, [0, 1, 2], grid_range=GRID)
    x = torch.rand(64, 2) * 2 - 1
    general = kan_forward(params, spec, x)
    fast = kan_forward(params, spec, x, uniform=GRID)
    assert general.shape == fast.shape == (3, 64, 1)
    assert general.std() > 1e-3
    torch.testing.assert_close(fast, general, atol=1e-5, rtol=0)
    # the uniform path really relies on the knots it is promised: other knots give other outputs
    wide = kan_forward(params, spec, x, uniform=(-2.0, 2.0))
    assert (wide - general).abs().max() > 1e-3


@pytest.mark.parametrize(("G", "k", "n_out"), [(5, 3, 8), (5, 3, 1), (3, 2, 3), (4, 0, 10)])
def test_fused_spline_kernel_matches_dense_path_values_and_gradients(G: int, k: int, n_out: int):
    """The C++ kernel (compile-time widths 1, 8, 10; runtime width 3; cubic and non-cubic orders)
    against the dense-basis path: outputs and all gradients, with inputs outside the knots."""
    if spline_kernel() is None:
        pytest.skip("no C++ compiler: the fused KAN kernel could not be built")
    gen = torch.Generator().manual_seed(100 * G + 10 * k + n_out)
    B, N, n_in = 3, 200, 4
    h = (torch.rand(B, N, n_in, generator=gen) * 6.0 - 3.0).requires_grad_(True)  # some beyond the last knots
    w = torch.randn(B, n_out, n_in, G + k, generator=gen).requires_grad_(True)
    lo, hi = -1.0, 1.0
    outside = (h < lo - k * (hi - lo) / G) | (h >= hi + k * (hi - lo) / G)
    assert outside.any() and not outside.all()
    gy = torch.randn(B, N, n_out, generator=gen)
    outs = {}
    for fused in (True, False):
        y = uniform_spline_part(h, w, lo, hi, G, k, fused=fused)
        outs[fused] = (y, *torch.autograd.grad(y, [h, w], gy))
    assert outs[False][0].abs().max() > 0.1
    for a, b, what in zip(outs[True], outs[False], ("y", "grad h", "grad w"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5, msg=lambda m, what=what: f"{what}: {m}")
    # a shared input (layer 0: every net sees the same points) takes the dense path; the kernel
    # on the same points given per net, with no input gradient, agrees with it
    x = torch.rand(N, n_in, generator=gen) * 2 - 1
    y_shared = uniform_spline_part(x, w, lo, hi, G, k)
    y_kernel = uniform_spline_part(x.expand(B, N, n_in), w, lo, hi, G, k)
    torch.testing.assert_close(y_kernel, y_shared, atol=1e-4, rtol=1e-5)
    (g_kernel,) = torch.autograd.grad(y_kernel, w, gy)
    (g_shared,) = torch.autograd.grad(y_shared, w, gy)
    torch.testing.assert_close(g_kernel, g_shared, atol=1e-4, rtol=1e-5)


def test_fused_spline_kernel_does_not_depend_on_thread_count():
    if spline_kernel() is None:
        pytest.skip("no C++ compiler: the fused KAN kernel could not be built")
    gen = torch.Generator().manual_seed(7)
    h = (torch.rand(6, 300, 8, generator=gen) * 2 - 1).requires_grad_(True)
    w = torch.randn(6, 8, 8, 8, generator=gen).requires_grad_(True)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = uniform_spline_part(h, w, -1.0, 1.0, 5, 3)
            results.append([y, *torch.autograd.grad(y.square().sum(), [h, w])])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)  # the kernel gives each net to one thread, in a fixed order (kan_spline.cpp)


# --- per-net training ---------------------------------------------------------------------


def test_fit_kan_inrs_trains_every_net_independently_of_its_partners():
    spec = kan_spec([2, 8, 8, 1], 5, 3)
    images = torch.rand(5, 6, 6, generator=torch.Generator().manual_seed(3))
    fit = InrFit(steps=10, lr=2e-2)
    together, extras = fit_kan_inrs(images[[0, 1, 2]], [10, 11, 12], spec, fit)
    # net b (image 1, seed 11) at another position, with other partners and another batch size
    other, _ = fit_kan_inrs(images[[1, 3]], [11, 13], spec, fit)
    _assert_net_close(_net(together, 1), _net(other, 0))
    init = init_kans(spec, [11], grid_range=GRID)
    moved = max(float((together[n][1] - init[n][0]).abs().max()) for n in _trainable(init))
    assert moved > 1e-3, "training did not move the net"
    assert extras["mse"].shape == (3,) and torch.isfinite(extras["psnr"]).all()


def _mse_setup(seeds):
    spec = kan_spec([2, 4, 1], 4, 3)
    x = torch.rand(32, 2, generator=torch.Generator().manual_seed(5)) * 2 - 1
    target = torch.sin(3 * x[:, :1]) * x[:, 1:]  # (N, 1), the same task for every net

    def loss_fn(p):
        return (kan_forward(p, spec, x, uniform=GRID) - target).square().mean(dim=(1, 2))

    return spec, init_kans(spec, seeds, grid_range=GRID), loss_fn


def test_train_kans_per_net_steps():
    spec, params, loss_fn = _mse_setup([4, 4, 4])
    lr = torch.full((3,), 1e-2)
    trained, loss = train_kans(params, spec, loss_fn, AdamSettings(5), lr, steps=torch.tensor([0, 5, 2]))
    for n in _trainable(params):
        # lr 0 from the first step: every update subtracts exactly m / denom * 0 = 0
        assert torch.equal(trained[n][0], params[n][0]), f"{n} moved with steps=0"
        assert (trained[n][1] - params[n][1]).abs().max() > 1e-4, f"{n} did not move with steps=5"
    assert torch.isfinite(loss).all()
    # a net stopped after 2 of 5 steps is the net trained for exactly 2 steps
    spec1, params1, loss_fn1 = _mse_setup([4])
    two, _ = train_kans(params1, spec1, loss_fn1, AdamSettings(2), torch.full((1,), 1e-2))
    _assert_net_close(_net(trained, 2), _net(two, 0))
    assert not torch.allclose(trained["layers.0.coef"][2], trained["layers.0.coef"][1], atol=1e-5)


def test_train_kans_per_net_lr_and_weight_decay():
    spec, params, loss_fn = _mse_setup([4, 4, 4])
    lr = torch.tensor([1e-2, 5e-2, 1e-2])
    wd = torch.tensor([0.0, 0.0, 1.0])
    trained, _ = train_kans(params, spec, loss_fn, AdamSettings(5), lr, wd)
    for b in (1, 2):  # other lr / other weight decay than net 0, same seed and data
        diff = max(float((trained[n][b] - trained[n][0]).abs().max()) for n in _trainable(params))
        assert diff > 1e-4, f"net {b} trained like net 0"
    # each net got exactly its own settings
    for b in (1, 2):
        spec1, p1, f1 = _mse_setup([4])
        alone, _ = train_kans(p1, spec1, f1, AdamSettings(5), lr[b : b + 1], wd[b : b + 1])
        _assert_net_close(_net(trained, b), _net(alone, 0))


# --- the classifier task ------------------------------------------------------------------


def test_draw_hyper_deterministic_per_seed_and_within_ranges():
    assert draw_hyper(3, RANGES) == draw_hyper(3, RANGES)
    assert draw_hyper(3, RANGES) != draw_hyper(4, RANGES)
    draws = [draw_hyper(s, RANGES) for s in range(300)]
    for key in ("lr", "weight_decay", "label_noise", "train_fraction"):
        lo, hi = getattr(RANGES, key)
        vals = [d[key] for d in draws]
        assert all(lo <= v <= hi for v in vals), key
        assert len(set(vals)) == len(vals), f"{key} repeats across seeds"
    assert {d["steps"] for d in draws} == set(RANGES.steps)
    assert all(isinstance(d["steps"], int) for d in draws)
    # log-uniform: about half the learning rates below the geometric mean of the bounds
    below = sum(d["lr"] < math.sqrt(1e-3 * 1e-1) for d in draws) / len(draws)
    assert 0.35 < below < 0.65


@pytest.fixture(scope="module")
def digits_small():
    data = digits_task(0)
    return {**data, "x_train": data["x_train"][:200], "y_train": data["y_train"][:200]}


def test_fit_kan_classifiers_tiny_digits(digits_small):
    spec = kan_spec([16, 8, 10], 5, 3)
    seeds = [0, 1, 2, 3, 4, 5]
    params, extras = fit_kan_classifiers(digits_small, seeds, spec, RANGES)
    for n, v in params.items():
        assert v.shape[0] == len(seeds) and torch.isfinite(v).all(), n
    acc = extras["test_acc"]
    assert acc.shape == (len(seeds),)
    assert ((acc >= 0) & (acc <= 1)).all()
    assert acc.max() - acc.min() > 0.05, f"no spread in test accuracy: {acc.tolist()}"
    for i, s in enumerate(seeds):
        h = draw_hyper(s, RANGES)
        assert extras["lr"][i].item() == pytest.approx(h["lr"], rel=1e-6)
        assert int(extras["steps"][i]) == h["steps"]

    good = ClassifierRanges(
        lr=(0.05, 0.05), weight_decay=(1e-5, 1e-5), steps=(100,), label_noise=(0.0, 0.0), train_fraction=(1.0, 1.0)
    )
    _, extras = fit_kan_classifiers(digits_small, [0, 1], spec, good)
    assert (extras["test_acc"] > 0.3).all(), extras["test_acc"].tolist()
    assert (extras["train_acc"] > 0.3).all()


# --- weight-space symmetry ----------------------------------------------------------------


def test_permute_flat_keeps_kan_outputs_and_shuffling_entries_does_not():
    spec = kan_spec([2, 8, 8, 1], 5, 3)
    G, k = 5, 3
    params = init_kans(spec, [0, 1, 2], grid_range=GRID)
    gen = torch.Generator().manual_seed(0)
    # make every node's knots and every edge's spline scale distinct, so that moving them matters
    for l in range(spec.n_layers):
        grid = params[f"layers.{l}.grid"]
        for b in range(grid.shape[0]):
            for i in range(grid.shape[1]):
                lo, hi = (
                    -1.0 - 0.3 * torch.rand(1, generator=gen).item(),
                    1.0 + 0.3 * torch.rand(1, generator=gen).item(),
                )
                grid[b, i] = uniform_grid(1, G, k, lo, hi)[0]
        sp = params[f"layers.{l}.scale_sp"]
        sp.mul_(0.5 + torch.rand(sp.shape, generator=gen))
    x = torch.rand(50, 2, generator=gen) * 2 - 1
    ref = kan_forward(params, spec, x)

    flat = flatten(params, spec)
    perm = permute_flat(flat, spec, torch.Generator().manual_seed(1))
    assert not torch.equal(perm, flat)
    torch.testing.assert_close(kan_forward(unflatten(perm, spec), spec, x), ref, atol=1e-5, rtol=0)

    shuffled = flat[:, torch.randperm(flat.shape[1], generator=gen)]
    assert (kan_forward(unflatten(shuffled, spec), spec, x) - ref).abs().max() > 1e-3


# --- the regression objective -------------------------------------------------------------


def test_regression_objective_standardizes_and_scores():
    from scipy.stats import kendalltau

    gen = torch.Generator().manual_seed(0)
    y = torch.randn(60, generator=gen) * 3 + 2
    reg = Regression.fit(y)
    assert reg.n_targets == 1
    assert reg.mean.item() == pytest.approx(y.mean().item(), abs=1e-5)
    assert reg.std.item() == pytest.approx(y.std().item(), rel=1e-5)
    z = (y.reshape(-1, 1) - reg.mean) / reg.std
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5) and z.std().item() == pytest.approx(1.0, abs=1e-5)

    perfect = reg.metrics(z, y)
    assert perfect["r2"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["tau"] == pytest.approx(1.0, abs=1e-9)
    assert perfect["loss"] == pytest.approx(0.0, abs=1e-9) and perfect["mse"] == pytest.approx(0.0, abs=1e-9)

    mean_only = reg.metrics(torch.zeros(60, 1), y)
    assert mean_only["r2"] == pytest.approx(0.0, abs=1e-5)
    assert mean_only["loss"] == pytest.approx(59 / 60, abs=1e-4)  # unit variance (n - 1) vs MSE (n)

    out = torch.randn(60, 1, generator=gen)
    m = reg.metrics(out, y)
    assert m["tau"] == pytest.approx(kendalltau(out.flatten().numpy(), y.numpy()).statistic, abs=1e-6)
    assert m["r2"] < 0.5

    multi = Regression.fit(torch.randn(40, 4, generator=gen) * torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert multi.n_targets == 4 and multi.std[3] > multi.std[0]
    assert "tau" not in multi.metrics(torch.zeros(40, 4), torch.randn(40, 4, generator=gen))


# --- stages (real Ray, own processes) -----------------------------------------------------

SMALL = {
    "kan": {
        "inr": {"n_train": 8, "n_val": 4, "n_test": 4, "steps": 5},
        "classifier": {"n_train": 8, "n_val": 4, "n_test": 4, "steps": [5, 10]},
        "shard_size": 8,
        "chunk_size": 4,
    }
}
N_NETS, N_SHARDS = 16, 2


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _zoo_digests(out: Path) -> dict[str, str]:
    shards = sorted((out / "shards").iterdir())
    return {f"shards/{p.name}": _digest(p) for p in shards} | {"manifest.csv": _digest(out / "manifest.csv")}


@pytest.fixture(scope="module")
def kan_zoos(tmp_path_factory) -> dict:
    """Both KAN tasks' zoos with 1 and with 2 Ray workers; two stage processes at a time."""
    tmp = tmp_path_factory.mktemp("kan_zoos")
    jobs = {}
    for workers in (1, 2):
        for task in ("inr", "classifier"):
            # own directory, hence own MLflow SQLite store: concurrent first use of one store races
            job = tmp / f"{task}{workers}"
            job.mkdir()
            params = write_params(job / "params.yaml", SMALL | {"ray": {"num_cpus": workers}})
            jobs[(task, workers)] = (params, job / "zoo")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(run_stage, f"kan_zoo@{key[0]}", ["--params", str(p), "--out", str(out)], tmp)
            for key, (p, out) in jobs.items()
        }
        results = {key: f.result() for key, f in futures.items()}
    return {"tmp": tmp, "jobs": jobs, "results": results}


@pytest.mark.parametrize("task", ["inr", "classifier"])
def test_kan_zoo_bytes_identical_with_one_or_two_ray_workers(kan_zoos, task: str):
    digests = []
    for workers in (1, 2):
        res = kan_zoos["results"][(task, workers)]
        assert res.returncode == 0, res.stderr[-3000:]
        out = kan_zoos["jobs"][(task, workers)][1]
        d = _zoo_digests(out)
        assert len([n for n in d if n.endswith(".safetensors")]) == N_SHARDS
        assert len((out / "manifest.csv").read_text().strip().splitlines()) == 1 + N_NETS
        digests.append(d)
    assert digests[0] == digests[1]  # the same shards, each fitted in the same order: workers only change placement


@pytest.mark.parametrize("task", ["inr", "classifier"])
def test_every_stored_kan_exports_to_pykan_with_the_same_outputs(kan_zoos, task: str, tmp_path: Path, monkeypatch):
    """Trained zoo KANs (not just fresh ones) become real ``kan.KAN`` models matching our forward to 1e-5."""
    from pipeline.zoo.pykan_io import pykan_forward, to_pykan

    assert kan_zoos["results"][(task, 1)].returncode == 0
    monkeypatch.chdir(tmp_path)
    spec, params, rows, _ = load_kan_zoo(kan_zoos["jobs"][(task, 1)][1])
    x = torch.rand(64, spec.layer_sizes[0], generator=torch.Generator().manual_seed(3)) * 2.4 - 1.2
    with torch.no_grad():
        ours = kan_forward(params, spec, x)
    for i in range(len(rows)):
        torch.testing.assert_close(pykan_forward(to_pykan(params, spec, i), x), ours[i], atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "model").exists()


def test_kan_zoo_rerun_refits_only_the_missing_shard(kan_zoos, tmp_path: Path):
    """Resume: a re-run keeps complete shards (same inode and mtime) and refits the missing one identically."""
    assert kan_zoos["results"][("classifier", 1)].returncode == 0
    params, src = kan_zoos["jobs"][("classifier", 1)]
    zoo = tmp_path / "zoo"
    shutil.copytree(src, zoo)
    shards = sorted((zoo / "shards").glob("shard_*.safetensors"))
    victim, kept = shards[-1], shards[:-1]
    before = victim.read_bytes()
    victim.unlink()
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept}
    res = run_stage("kan_zoo@classifier", ["--params", str(params), "--out", str(zoo)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fitting 1" in res.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == stamps
    assert victim.read_bytes() == before  # a refit of the same shard: same nets, batch and order


def test_corrupt_kan_shard_is_named_by_kan_graphs(kan_zoos, tmp_path: Path):
    assert kan_zoos["results"][("inr", 1)].returncode == 0
    params, src = kan_zoos["jobs"][("inr", 1)]
    zoo = tmp_path / "zoo"
    shutil.copytree(src, zoo)
    victim = zoo / "shards" / "shard_00001.safetensors"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    out = tmp_path / "g"
    res = run_stage(
        "kan_graphs", ["--params", str(params), "--task", "inr", "--zoo", str(zoo), "--out", str(out)], tmp_path
    )
    assert res.returncode != 0
    assert "shard_00001.safetensors" in res.stderr
    assert not (out / "train.safetensors").exists() and not (out / "meta.json").exists()


def test_a_trained_accuracy_predictor_applies_to_a_kan_classifier_zoo(kan_zoos, tmp_path: Path):
    """kan_graphs -> kan_train (regression on each classifier's test accuracy) -> stages.predict."""
    import csv

    from pipeline.predict import zoo_nets
    from pipeline.saved import load
    from tests.conftest import REPO, merge

    params, zoo = kan_zoos["jobs"][("classifier", 1)]
    assert kan_zoos["results"][("classifier", 1)].returncode == 0
    graphs, train = tmp_path / "graphs", tmp_path / "train"
    over = {"kan": {"train": {"models": ["ws_kan"], "seeds": [0], "epochs": 1}}}
    p = write_params(tmp_path / "params.yaml", merge(SMALL, over))
    for stage, args in (("kan_graphs", ["--task", "classifier", "--zoo", str(zoo), "--out", str(graphs)]),
                        ("kan_train@classifier", ["--graphs", str(graphs), "--out", str(train)])):  # fmt: skip
        res = run_stage(stage, ["--params", str(p), *args], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "preds.csv"
    res = run_stage("predict", ["--run", str(train / "ws_kan_seed0"), "--zoo", str(zoo), "--out", str(out)], REPO)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    _, zoo_params, manifest = zoo_nets(zoo)
    assert [r["test_acc"] for r in rows] == [m["test_acc"] for m in manifest]
    expected = load(train / "ws_kan_seed0").predict(zoo_params).flatten()
    assert [float(r["predicted_test_acc"]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)
