"""Domain adaptation in the library: the classifier zoo's symmetry, its seeded target domain, its
plan and batched training, every adapter's equivariance (both ways) and the adaptation objective."""

from __future__ import annotations

import pytest
import torch

from pipeline.io import tensors_hash
from pipeline.models.mlp import FlatMLPEditor
from pipeline.tasks.adaptation import Adaptation, adaptation_objective
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import flatten, permute, random_permutations, unflatten
from pipeline.zoo.adapt_zoo import (
    PAIRS,
    Corruption,
    PairFit,
    corrupt_digits,
    fit_pair_shard,
    init_pair_mlps,
    mlp_forward,
    pair_banks,
    pair_spec,
    plan_pair_zoo,
    pool_digits,
    train_pair_mlps,
)
from tests.conftest import assert_close_to_scale
from tests.test_editing import EDITORS, _edit, _editor
from tests.weightspace_cases import random_params, rows_only, swap_inputs

SPEC = pair_spec(16, [6, 5])  # 16 inputs -> 6 -> 5 -> 2
B = 3


@pytest.fixture(scope="module")
def banks() -> dict[str, torch.Tensor]:
    from pipeline.data import load_images

    images, digits = load_images("mnist_offline")
    return pair_banks(images, digits, Corruption(), seed=3, n_test=500, pool=7, per_digit_train=32).tensors()


def test_permuting_hidden_units_keeps_the_logits_and_a_wrong_coupling_does_not():
    params = random_params(SPEC, B)
    x = torch.randn(10, 16)
    out = mlp_forward(params, SPEC, x)
    perms = random_permutations(SPEC, B, torch.Generator().manual_seed(1))
    torch.testing.assert_close(mlp_forward(permute(params, SPEC, perms), SPEC, x), out)
    for layer in SPEC.hidden_layers:
        assert not torch.allclose(mlp_forward(rows_only(params, layer), SPEC, x), out, atol=1e-3)
    assert not torch.allclose(mlp_forward(swap_inputs(params), SPEC, x), out, atol=1e-3)


def test_the_target_domain_is_seeded_and_differs_from_the_source():
    images = torch.rand(20, 28, 28)
    a, b = corrupt_digits(images, Corruption(), 5), corrupt_digits(images, Corruption(), 5)
    assert torch.equal(a, b) and a.shape == images.shape  # the same call twice: same seed, same order
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert not torch.equal(a, corrupt_digits(images, Corruption(), 6))  # jitter and noise come from the seed
    plain = Corruption(rotation=0, jitter=0, blur=0, contrast=1, brightness=0, noise=0)
    torch.testing.assert_close(corrupt_digits(images, plain, 5), images, atol=1e-5, rtol=0)
    flipped = corrupt_digits(images, Corruption(0, 0, True, 0, 1, 0, 0), 5)
    torch.testing.assert_close(flipped, images.flip(-1), atol=1e-5, rtol=0)
    assert pool_digits(images, 4).shape == (20, 49)


def test_the_corruption_is_element_wise_the_same_bytes_for_any_threads_or_batch():
    """The blur and the rotation grid are element-wise arithmetic (no convolution or matrix
    library, whose kernels may depend on memory alignment or load): a net's corrupted digits do
    not depend on the thread count or on which other images share the batch, and they match the
    library operations up to rounding."""
    from torch.nn import functional as F

    from pipeline.zoo.adapt_zoo import _gaussian_blur, _rotation_grid

    images = torch.rand(33, 28, 28)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = corrupt_digits(images, Corruption(), 5)
        blur_one = _gaussian_blur(images, 1.0)
        torch.set_num_threads(2)
        assert torch.equal(corrupt_digits(images, Corruption(), 5), one)
        assert torch.equal(_gaussian_blur(images, 1.0), blur_one)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_gaussian_blur(images[7:], 1.0), blur_one[7:])  # another offset in memory
    k = torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / 2)
    k = k / k.sum()
    conv = F.conv2d(F.conv2d(images[:, None], k.view(1, 1, 1, -1), padding=(0, 3)), k.view(1, 1, -1, 1), padding=(3, 0))
    torch.testing.assert_close(blur_one, conv[:, 0], atol=1e-6, rtol=0)
    angle = torch.rand(33) * 6
    theta = torch.zeros(33, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    expected = F.affine_grid(theta, [33, 1, 28, 28], align_corners=False)
    torch.testing.assert_close(_rotation_grid(angle.cos(), angle.sin(), 28, 28), expected, atol=1e-6, rtol=0)


def test_a_zoo_folder_keeps_its_digit_banks_and_refuses_damaged_ones(tmp_path):
    """The banks are built once per zoo folder and key: a resumed zoo reads the stored bytes
    (whatever a new computation would give), another key retires the file (and brings it back),
    and a damaged file or another zoo's banks are named."""
    from types import SimpleNamespace

    from pipeline.io import CorruptFileError, read_metadata, save_tensors
    from pipeline.zoo.adapt_zoo import BANKS_FILE, digit_banks, read_banks

    zoo = SimpleNamespace(digits_test=500, pool=7, images_per_digit=16)
    adapt = SimpleNamespace(zoo=zoo, corruption=Corruption())
    env = {"code": "c0"}
    path = tmp_path / BANKS_FILE
    first = digit_banks(adapt, 0, env, tmp_path)
    assert torch.equal(read_banks(path)["x_target_train"], first["x_target_train"])
    # a stored file of the same key is what a resumed zoo gets: change its bytes (keeping it
    # self-consistent) and the next call returns them, not a fresh computation
    nudged = dict(first) | {"x_target_train": first["x_target_train"] + 1e-6}
    save_tensors(path, nudged, read_metadata(path) | {"sha256": tensors_hash(nudged)})
    assert torch.equal(digit_banks(adapt, 0, env, tmp_path)["x_target_train"], nudged["x_target_train"])
    # another key (other code): the file is retired, rebuilt, and comes back with its key
    other = digit_banks(adapt, 0, {"code": "c1"}, tmp_path)
    assert torch.equal(other["x_target_train"], first["x_target_train"])
    assert len(list((tmp_path / "retired").glob(f"*/{BANKS_FILE}"))) == 1
    assert torch.equal(digit_banks(adapt, 0, env, tmp_path)["x_target_train"], nudged["x_target_train"])
    with pytest.raises(CorruptFileError, match="recipe"):
        read_banks(path, expect=tensors_hash(first))  # the banks of another zoo
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=BANKS_FILE):
        digit_banks(adapt, 0, env, tmp_path)


def test_banks_hold_each_pairs_digits_half_and_half(banks):
    from pipeline.data import load_images

    assert banks["x_source_train"].shape == (len(PAIRS), 64, 16) == banks["x_target_train"].shape
    assert torch.equal(banks["y_train"][:, :32], torch.zeros(len(PAIRS), 32, dtype=torch.long))
    assert torch.equal(banks["y_train"][:, 32:], torch.ones(len(PAIRS), 32, dtype=torch.long))
    assert banks["x_source_test"].shape[1] == banks["y_test"].shape[1] >= 2 * 30
    assert not torch.equal(banks["x_source_train"], banks["x_target_train"])
    # the banks are the digits themselves: the first training image of pair (0, 1) is a 0 of the digits
    images, digits = load_images("mnist_offline")
    zeros = pool_digits(images[digits == 0], 7)
    assert (zeros - banks["x_source_train"][0, 0]).abs().sum(1).min() < 1e-5


def test_the_plan_keeps_novel_pairs_in_test_and_splits_the_rest():
    plan = plan_pair_zoo(200, 20, 15, 3, seed=1)
    from pipeline.zoo.adapt_zoo import novel_pairs

    novel = set(novel_pairs(3, 1))
    assert len(novel) == 3
    assert all(n.split == "test" for n in plan if n.pair in novel)
    assert {n.pair for n in plan if n.split == "train"}.isdisjoint(novel)
    assert sum(n.split == "val" for n in plan) == 20
    assert sum(n.split == "test" and n.pair not in novel for n in plan) == 15
    assert plan == plan_pair_zoo(200, 20, 15, 3, seed=1) and plan != plan_pair_zoo(200, 20, 15, 3, seed=2)
    with pytest.raises(ValueError, match="none for training"):
        plan_pair_zoo(30, 20, 15, 3, seed=1)


def test_a_nets_training_does_not_depend_on_its_partners(banks):
    spec = pair_spec(16, [8])
    x, y = banks["x_source_train"][[0, 1, 2]], banks["y_train"][[0, 1, 2]]

    def trained(seeds, rows):
        return train_pair_mlps(spec, init_pair_mlps(spec, seeds), seeds, x[rows], y[rows], 20, 1e-2, 8)

    a, b, alone = trained([11, 12], [0, 1]), trained([11, 13], [0, 2]), trained([11], [0])
    # other partners / alone: batched kernels may sum in another order on another CPU. Float32
    # drift over these 20 steps is ~3e-7 of a tensor's scale; training moves it ~0.2 of it
    for k in a:
        assert_close_to_scale(b[k][0], a[k][0], 1e-4, k)
        assert_close_to_scale(alone[k][0], a[k][0], 1e-4, k)
    assert not torch.equal(a["layers.0.weight"][0], init_pair_mlps(spec, [11])["layers.0.weight"][0])


def test_the_corruption_hurts_and_training_on_the_target_recovers(banks):
    plan = plan_pair_zoo(45, 5, 5, 0, seed=0)
    _, ex = fit_pair_shard(plan, banks, PairFit(hidden=(16,), steps=150, lr=1e-2, finetune_steps=20))
    assert float(ex["source_acc"].mean()) > 0.9
    assert float(ex["target_acc"].mean()) < float(ex["source_acc"].mean()) - 0.05
    assert float(ex["oracle_acc"].mean()) > float(ex["target_acc"].mean()) + 0.05
    assert torch.equal(ex["pair"], torch.tensor([n.pair for n in plan]))


# --------------------------------------------------------------------------------------------
# adapters and the objective
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in EDITORS if not k.endswith("probes")])
def test_every_adapter_is_equivariant_on_a_classifier_and_detects_wrong_couplings(kind):
    model = _editor(kind, SPEC)
    params = random_params(SPEC, B)
    perms = random_permutations(SPEC, B, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = _edit(model, params, SPEC)
        scale = float((out - flatten(params, SPEC)).abs().max())
        assert scale > 1e-2
        expected = flatten(permute(unflatten(out, SPEC), SPEC, perms), SPEC)
        torch.testing.assert_close(
            _edit(model, permute(params, SPEC, perms), SPEC), expected, rtol=1e-5, atol=1e-5 * scale
        )
        for layer in SPEC.hidden_layers:
            wrong = flatten(rows_only(unflatten(out, SPEC), layer), SPEC)
            assert float((_edit(model, rows_only(params, layer), SPEC) - wrong).abs().max()) > 1e-4 * scale


def test_the_flat_mlp_adapter_is_not_equivariant():
    torch.manual_seed(0)
    model = FlatMLPEditor(SPEC.n_params, hidden=32, layers=2, init_scale=1.0).eval()
    params = random_params(SPEC, B)
    perms = random_permutations(SPEC, B, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(flatten(params, SPEC))
        expected = flatten(permute(unflatten(out, SPEC), SPEC, perms), SPEC)
        assert float((model(flatten(permute(params, SPEC, perms), SPEC)) - expected).abs().max()) > 1e-3
        model.scale.zero_()
        assert torch.equal(model(flatten(params, SPEC)), flatten(params, SPEC))  # flat + 0 * delta: exact


def _objective(banks, spec, params) -> tuple[Adaptation, torch.Tensor]:
    """The objective as the ``adapt`` stage builds it (pairs 3 and 4 novel), and the nets normalized."""
    stats = fit_stats(params, spec)
    meta = {"spec": spec.to_dict(), "norm_stats": stats, "novel_pairs": [3, 4]}
    return adaptation_objective(meta, banks), flatten(apply_stats(params, spec, stats), spec)


def test_the_adaptation_metrics_are_the_nets_own_and_invariant_to_their_hidden_order(banks):
    spec = pair_spec(16, [8, 8])
    plan = plan_pair_zoo(45, 5, 5, 0, seed=0)[:6]
    params, ex = fit_pair_shard(plan, banks, PairFit(hidden=(8, 8), steps=60, lr=1e-2, finetune_steps=5))
    obj, flat = _objective(banks, spec, params)
    pair = ex["pair"]
    m = obj.metrics(flat, pair)
    # unadapted nets: the metric is the zoo's own held-out score of each net
    assert m["acc"] == pytest.approx(float(ex["target_acc"].mean()), abs=1e-6)
    assert m["source_acc"] == pytest.approx(float(ex["source_acc"].mean()), abs=1e-6)
    assert ("novel_acc" in m) == bool(((pair == 3) | (pair == 4)).any())
    perms = random_permutations(spec, len(plan), torch.Generator().manual_seed(2))
    permuted = flatten(permute(unflatten(flat, spec), spec, perms), spec)
    assert float(obj.loss(permuted, pair)) == pytest.approx(float(obj.loss(flat, pair)), rel=1e-5)
    wrong = flatten(rows_only(unflatten(flat, spec), 1), spec)
    assert float(obj.loss(wrong, pair)) != pytest.approx(float(obj.loss(flat, pair)), rel=1e-3)
