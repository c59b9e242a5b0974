"""StatNN: the statistics, invariance under any neuron permutation, sensitivity to the weights."""

from __future__ import annotations

import torch

from pipeline.models.statnn import StatNN, tensor_statistics
from pipeline.weightspace.spec import flatten, mlp_spec, permute, random_permutations


def test_statistics_match_numpy_definitions():
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    s = tensor_statistics(x)
    flat = x.flatten(1)
    torch.testing.assert_close(s[:, 0], flat.mean(1))
    torch.testing.assert_close(s[:, 1], flat.var(1, unbiased=False))
    torch.testing.assert_close(s[:, 2], flat.min(1).values)
    srt = flat.sort(1).values  # 30 entries: linear interpolation at (30 - 1) q
    torch.testing.assert_close(s[:, 3], srt[:, 7] + 0.25 * (srt[:, 8] - srt[:, 7]))
    torch.testing.assert_close(s[:, 4], srt[:, 14:16].mean(1))
    torch.testing.assert_close(s[:, 6], flat.max(1).values)


def test_statnn_invariant_and_reads_the_weights():
    spec = mlp_spec([2, 5, 4, 3, 1])
    g = torch.Generator().manual_seed(0)
    params = {t.name: torch.randn(6, *t.shape, generator=g) for t in spec.tensors}
    torch.manual_seed(0)
    model = StatNN(spec, 3, hidden=16, layers=2).eval()
    model.norm.running_var.fill_(1.0)
    with torch.no_grad():
        ref = model(flatten(params, spec))
        perms = random_permutations(spec, 6, torch.Generator().manual_seed(1))
        torch.testing.assert_close(model(flatten(permute(params, spec, perms), spec)), ref, rtol=1e-5, atol=1e-6)
        scaled = {k: v * 1.5 if k == "layers.1.weight" else v for k, v in params.items()}
        assert float((model(flatten(scaled, spec)) - ref).abs().max()) > 1e-3
