"""CNN zoo family: the batched forward against one module per net, and the channel symmetry
both ways (shared permutations keep the logits; wrongly coupled ones change them)."""

import pytest
import torch
from torch import nn

from pipeline.weightspace.spec import ParamSpec, permute, random_permutations
from pipeline.zoo.cnn import ACTIVATIONS, CNNArch, cnn_forward, cnn_spec, init_cnns, small_cnn_zoo_arch
from pipeline.zoo.cnn_zoo import (
    CNNRanges,
    checkpoint_steps,
    draw_cnn_hyper,
    fit_cnn_shard,
    mnist_task,
    plan_cnn_zoo,
    train_cnns,
    zoo_architectures,
)
from tests.conftest import assert_close_to_scale

HOMOGENEOUS = small_cnn_zoo_arch()
# residuals 1 -> 2 and 2 -> 4 tie layers 1, 2 and 4; layer 3 is free; strides make the pooled skip matter
HETEROGENEOUS = CNNArch((8, 8, 16, 8), (3, 5, 7, 3), (2, 1, 2, 1), "gelu", ((1, 2), (2, 4)))


class OneCNN(nn.Module):
    """The same CNN as one plain module (the reference the batched forward must match)."""

    def __init__(self, arch: CNNArch):
        super().__init__()
        sizes = arch.layer_sizes
        self.arch = arch
        self.conv = nn.ModuleList(
            nn.Conv2d(sizes[l], sizes[l + 1], k, s, k // 2)
            for l, (k, s) in enumerate(zip(arch.kernels, arch.strides, strict=True))
        )
        self.head = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x):
        outs = [x]
        for l, conv in enumerate(self.conv):
            x = ACTIVATIONS[self.arch.activation](conv(x))
            for a, dst in self.arch.residual:
                if dst == l + 1:
                    x = x + nn.functional.adaptive_avg_pool2d(outs[a], x.shape[-2:])
            outs.append(x)
        return self.head(x.mean(dim=(2, 3)))


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 14, 14, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", [HOMOGENEOUS, HETEROGENEOUS], ids=["homogeneous", "heterogeneous"])
def test_batched_forward_matches_one_module_per_net(arch):
    params = init_cnns(arch, [1, 2, 3], [1.0, 2.0, 0.5])
    x = images()
    batched = cnn_forward(params, arch, x)
    for b in range(3):
        one = OneCNN(arch)
        one.load_state_dict({k: v[b] for k, v in params.items()})
        torch.testing.assert_close(batched[b], one(x), atol=1e-5, rtol=1e-5)
    # per-net images: net b sees its own batch
    own = torch.stack([images(seed=s) for s in range(3)])
    per_net = cnn_forward(params, arch, own)
    for b in range(3):
        torch.testing.assert_close(
            per_net[b], cnn_forward({k: v[b : b + 1] for k, v in params.items()}, arch, own[b])[0]
        )


@pytest.mark.parametrize("arch", [HOMOGENEOUS, HETEROGENEOUS], ids=["homogeneous", "heterogeneous"])
def test_permuting_hidden_channels_keeps_the_logits(arch):
    spec = cnn_spec(arch)
    params = init_cnns(arch, [4, 5], [1.0, 3.0])
    perms = random_permutations(spec, 2, torch.Generator().manual_seed(0))
    assert set(perms) == set(spec.hidden_layers)
    for a, l in arch.residual:
        assert torch.equal(perms[a], perms[l])
    x = images()
    before = cnn_forward(params, arch, x)
    after = cnn_forward(permute(params, spec, perms), arch, x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert not torch.equal(permute(params, spec, perms)["conv.0.weight"], params["conv.0.weight"])


def test_wrongly_coupled_permutations_change_the_logits():
    arch, spec = HETEROGENEOUS, cnn_spec(HETEROGENEOUS)
    params = init_cnns(arch, [6], [2.0])
    x = images()
    before = cnn_forward(params, arch, x)
    g = torch.Generator().manual_seed(1)
    perms = random_permutations(spec, 1, g)
    # a residual partner permuted on its own: layer 2 differently from layers 1 and 4
    untied = dict(perms) | {2: torch.roll(perms[2], 1, dims=1)}
    # the classes are not permutable either
    wrong = [untied, perms | {spec.n_layers: torch.randperm(10, generator=g).unsqueeze(0)}]
    for p in wrong:
        assert not torch.allclose(cnn_forward(permute(params, spec, p), arch, x), before, atol=1e-3)
    # rows of a conv alone (its output channels without the next layer's input channels)
    rows_only = {k: v.clone() for k, v in params.items()}
    rows_only["conv.2.weight"] = rows_only["conv.2.weight"][:, torch.randperm(16, generator=g)]
    assert not torch.allclose(cnn_forward(rows_only, arch, x), before, atol=1e-3)


def test_spec_ties_residual_partners_and_round_trips():
    spec = cnn_spec(HETEROGENEOUS)
    assert spec.tied == ((1, 2), (2, 4))
    assert sorted(spec.perm_groups) == [(1, 2, 4), (3,)]
    assert ParamSpec.from_dict(spec.to_dict()) == spec
    assert "tied" not in cnn_spec(HOMOGENEOUS).to_dict()  # specs without residuals keep their stored form
    assert CNNArch.from_dict(HETEROGENEOUS.to_dict()) == HETEROGENEOUS
    with pytest.raises(ValueError, match="residual"):
        CNNArch((8, 16), (3, 3), (1, 1), "relu", ((1, 2),))
    with pytest.raises(ValueError, match="tied layers"):
        ParamSpec("cnn", (1, 8, 16, 10), spec.tensors[:0], tied=((1, 2),))


RANGES = CNNRanges(
    lr=(1e-3, 3e-2),
    weight_decay=(1e-6, 1e-2),
    init_scale=(0.5, 2.0),
    dropout=(0.0, 0.5),
    label_noise=(0.0, 0.5),
    train_fraction=(0.05, 1.0),
    steps=(4, 8),
    batch_size=8,
    checkpoints=2,
)


@pytest.fixture(scope="module")
def digits():
    data = mnist_task(0, n_test=100)
    return {k: v[:400] for k, v in data.items()}


def test_hyper_parameters_come_from_the_seed_alone_and_stay_in_range():
    a, b = draw_cnn_hyper(7, RANGES), draw_cnn_hyper(7, RANGES)
    assert a == b and a != draw_cnn_hyper(8, RANGES)
    for s in range(50):
        h = draw_cnn_hyper(s, RANGES)
        for field in ("lr", "weight_decay", "init_scale", "dropout", "label_noise", "train_fraction"):
            lo, hi = getattr(RANGES, field)
            assert lo <= h[field] <= hi, field
        assert h["steps"] in RANGES.steps
    assert checkpoint_steps(8, 4) == [2, 4, 6, 8] and checkpoint_steps(3, 4)[-1] == 3


# A run trained in another batch (other partners, another batch size: grouped convolutions and
# batched products may sum in another order on another CPU) drifts by float32 rounding: ~3e-4 of a
# tensor's scale at most over these <= 8 Adam steps when every product is off by one ulp, while
# training moves the tensors by ~0.8 of it. Its test accuracy may then differ by one digit at most.
DRIFT = 5e-3


def _one_digit(data) -> float:
    return 1.5 / len(data["y_test"])


def test_a_run_does_not_depend_on_its_partners(digits):
    arch = HETEROGENEOUS
    together, extras = train_cnns(arch, [11, 12, 13], digits, RANGES)
    alone, extras_alone = train_cnns(arch, [12], digits, RANGES)
    for j in range(RANGES.checkpoints):
        for name in together[j]:
            assert_close_to_scale(alone[j][name][0], together[j][name][1], DRIFT, (j, name))
    acc_alone, acc = extras_alone["test_acc"][:, 0], extras["test_acc"][:, 1]
    torch.testing.assert_close(acc_alone, acc, rtol=0, atol=_one_digit(digits))
    steps = extras["steps"].long()
    assert torch.equal(extras["step"][-1], steps) and bool((extras["step"][0] < steps).all())
    # snapshots differ from the initial values and from each other
    init = init_cnns(arch, [11, 12, 13], [draw_cnn_hyper(s, RANGES)["init_scale"] for s in (11, 12, 13)])
    assert not torch.equal(together[0]["conv.0.weight"], init["conv.0.weight"])
    assert not torch.equal(together[0]["conv.0.weight"], together[1]["conv.0.weight"])


def test_sampled_architectures_are_valid_and_distinct():
    archs = zoo_architectures("heterogeneous", 12, seed=0)
    assert len(set(archs)) == 12
    for arch in archs:
        assert 2 <= arch.n_conv <= 5 and set(arch.channels) <= {4, 8, 16, 32} and set(arch.kernels) <= {3, 5, 7}
        for a, l in arch.residual:
            assert arch.channels[a - 1] == arch.channels[l - 1]
    assert any(arch.residual for arch in archs) and any(not arch.residual for arch in archs)
    assert zoo_architectures("homogeneous", 12, seed=0) == [small_cnn_zoo_arch()]
    with pytest.raises(ValueError, match="unknown CNN zoo family"):
        zoo_architectures("wild", 1, 0)


def test_the_plan_splits_by_run_and_a_shard_keeps_every_checkpoint(digits):
    plan = plan_cnn_zoo(3, 6, n_val=1, n_test=2, seed=0)
    assert len(plan) == 18 and [r.run_id for r in plan] == list(range(18))
    for a in range(3):
        splits = [r.split for r in plan if r.arch_index == a]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (3, 1, 2)
    assert plan == plan_cnn_zoo(3, 6, 1, 2, seed=0) and plan != plan_cnn_zoo(3, 6, 1, 2, seed=1)
    runs = [r for r in plan if r.arch_index == 1]
    params, cols = fit_cnn_shard(HETEROGENEOUS, runs, digits, RANGES, chunk=4)
    n = len(runs) * RANGES.checkpoints
    assert params["conv.0.weight"].shape[0] == n and all(v.shape[0] == n for v in cols.values())
    assert cols["net_id"].tolist() == [r.run_id * 2 + j for r in runs for j in range(2)]
    # the same nets as training each run on its own (chunking changes the batch: float32 drift only)
    alone, extras = train_cnns(HETEROGENEOUS, [runs[4].seed], digits, RANGES)
    for j in range(2):
        assert_close_to_scale(alone[j]["conv.1.weight"][0], params["conv.1.weight"][4 * 2 + j], DRIFT, j)
        assert abs(float(cols["test_acc"][4 * 2 + j]) - float(extras["test_acc"][j, 0])) <= _one_digit(digits)
