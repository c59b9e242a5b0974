"""DWSNet: the equivariant layer block by block, the invariant model, wrong couplings."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.dwsnet import DWSEncoder, DWSNet, EquivariantLinear, slots, to_slots
from pipeline.weightspace.spec import flatten, mlp_spec, permute, random_permutations
from pipeline.zoo.kan import init_kans, kan_spec
from tests.weightspace_cases import SIREN_LAYOUTS, random_params

LAYOUTS = {
    "mlp2-8-8-1": mlp_spec([2, 8, 8, 1]),
    "mlp2-5-4-3-1": mlp_spec([2, 5, 4, 3, 1]),
    "mlp3-4-2": mlp_spec([3, 4, 2]),
}
B = 3


def _params(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.randn(B, *t.shape, generator=g) for t in spec.tensors}


def _permute_slots(xs, spec, perms):
    """Apply the hidden-neuron permutations to slot tensors ``(B, *neuron axes, c)``."""
    out = {}
    for s in slots(spec):
        v = xs[s.name]
        for d, l in enumerate(s.layers):
            if l in perms:
                idx = (
                    perms[l]
                    .view(B, *([1] * d), -1, *([1] * (v.dim() - d - 2)))
                    .expand(*v.shape[: d + 1], -1, *v.shape[d + 2 :])
                )
                v = v.gather(d + 1, idx)
        out[s.name] = v
    return out


def _close(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_block_of_the_layer_is_equivariant(name):
    spec = LAYOUTS[name]
    torch.manual_seed(0)
    layer = EquivariantLinear(spec, None, 4)
    perms = random_permutations(spec, B, torch.Generator().manual_seed(1))
    xs = to_slots(_params(spec), spec)
    xs_p = to_slots(permute(_params(spec), spec, perms), spec)
    _close(_permute_slots(xs, spec, perms), xs_p)  # the helper permutes like the spec does
    with torch.no_grad():
        for k in range(len(layer.terms)):  # one block (src slot, dst slot, kept axes) at a time
            saved = [t.clone() for t in layer.thetas]
            for i, t in enumerate(layer.thetas):
                if i != k:
                    t.zero_()
            out, out_p = layer(xs), layer(xs_p)
            assert any(v.abs().max() > 1e-4 for v in out.values()), layer.terms[k]
            _close(_permute_slots(out, spec, perms), out_p)
            for t, v in zip(layer.thetas, saved, strict=True):
                t.copy_(v)


def _term_by_term(layer: EquivariantLinear, xs: dict) -> dict:
    """The module equation one term at a time: pool, ``einsum`` with the term's Θ, broadcast
    over the output's pooled-out axes, sum, scale, add the bias (no grouping, no cache)."""
    outs = {}
    for term, theta in zip(layer.terms, layer.thetas, strict=True):
        a, b = layer.slots[term.src], layer.slots[term.dst]
        x = xs[a.name]
        if term.pool_dims:
            x = x.mean(term.pool_dims) if layer.reduction == "mean" else x.amax(term.pool_dims)
        y = torch.einsum(term.equation, x, theta)
        out_sub = term.equation.split("->")[1]  # batch, kept (keep order), fixed axes of b, c_out
        fixed = iter(out_sub[1 + len(term.keep) : -1])
        spare = iter(c for c in "ABCDEFGHIJ" if c not in term.equation)
        full, ones = out_sub[0], {}
        for d, l in enumerate(b.layers):
            if l in term.keep:
                full += out_sub[1 + term.keep.index(l)]
            elif l in layer.hidden:
                ones[next(spare)] = b.sizes[d]
                full += list(ones)[-1]
            else:
                full += next(fixed)
        operands = (y, torch.ones(*ones.values())) if ones else (y,)
        y = torch.einsum(f"{out_sub}{',' * bool(ones)}{''.join(ones)}->{full + out_sub[-1]}", *operands)
        outs[b.name] = outs.get(b.name, 0) + y
    result = {}
    for j, b in enumerate(layer.slots):
        shape = [1] + [1 if l in layer.hidden else s for s, l in zip(b.sizes, b.layers, strict=True)]
        result[b.name] = outs[b.name] * layer.scale[j] + layer.biases[j].reshape(*shape, -1)
    return result


@pytest.mark.parametrize("reduction", ["mean", "max"])
@pytest.mark.parametrize("name", [*LAYOUTS, "kan"])
def test_grouped_layer_computes_the_module_equation(name, reduction):
    """The grouped, cached forward equals the equation evaluated term by term (every layout,
    both reductions, the first layer's raw channels and a later layer's, NP's all-permuted layer)."""
    spec = kan_spec([2, 3, 2], grid_size=3, order=2) if name == "kan" else LAYOUTS[name]
    torch.manual_seed(0)
    xs = to_slots(_params(spec), spec)
    first = EquivariantLinear(spec, None, 4, reduction=reduction)
    later = EquivariantLinear(spec, 4, 3, reduction=reduction)
    every = EquivariantLinear(spec, 4, 3, permuted=set(range(spec.n_layers + 1)), reduction=reduction)
    with torch.no_grad():
        for layer, x in ((first, xs), (later, first(xs)), (every, first(xs))):
            for b in layer.biases:
                b.normal_()
            _close(layer(x), _term_by_term(layer, x))


def test_block_structure_matches_the_paper():
    """W_i -> W_i with two hidden axes has 4 terms; neighbours couple one axis; far tensors only pool."""
    spec = LAYOUTS["mlp2-5-4-3-1"]
    layer = EquivariantLinear(spec, None, 2)
    names = [s.name for s in layer.slots]
    count = {}
    for t in layer.terms:
        key = (names[t.src], names[t.dst])
        count[key] = count.get(key, 0) + 1
    assert count[("layers.1.weight", "layers.1.weight")] == 4  # identity, row, column, full pool
    assert count[("layers.1.weight", "layers.2.weight")] == 2  # shared layer-2 axis: kept or pooled
    assert count[("layers.0.weight", "layers.3.weight")] == 1  # no shared hidden axis: fully pooled
    assert count[("layers.0.bias", "layers.0.weight")] == 2


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_dwsnet_is_invariant_and_detects_wrong_couplings(name):
    spec = LAYOUTS[name]
    torch.manual_seed(0)
    model = DWSNet(spec, n_classes=5, hidden=8, layers=3).eval()
    params = _params(spec)
    perms = random_permutations(spec, B, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(flatten(params, spec))
        out = model(flatten(permute(params, spec, perms), spec))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        wrong = dict(params)  # rows of layer 0 permuted without the matching columns of layer 1
        wrong["layers.0.weight"] = params["layers.0.weight"].flip(1)
        assert float((model(flatten(wrong, spec)) - ref).abs().max()) > 1e-4 * float(ref.abs().max())
        inputs = dict(params)  # permuting the (unpermutable) input neurons
        inputs["layers.0.weight"] = params["layers.0.weight"].flip(2)
        assert float((model(flatten(inputs, spec)) - ref).abs().max()) > 1e-4 * float(ref.abs().max())


def test_dwsnet_reads_kans_too():
    spec = kan_spec([2, 4, 3, 1], 3, 2)
    params = init_kans(spec, [0, 1, 2])
    torch.manual_seed(0)
    model = DWSNet(spec, n_classes=2, hidden=4, layers=2).eval()
    perms = random_permutations(spec, B, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(flatten(params, spec))
        torch.testing.assert_close(model(flatten(permute(params, spec, perms), spec)), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["np", "hnp"])
@pytest.mark.parametrize("name", ["mlp2-8-8-1", "mlp2-5-4-3-1"])
def test_nfn_invariant_to_hidden_permutations_only(mode, name):
    from pipeline.models.nfn import NFN

    spec = LAYOUTS[name]
    torch.manual_seed(0)
    model = NFN(spec, n_classes=4, hidden=8, layers=2, mode=mode, fourier_features=2).eval()
    with torch.no_grad():  # a generic point of the model family: O(1) position codes, non-contractive maps
        for p in model.encoder.io.values():
            p.normal_()
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(2.0)
    params = _params(spec)
    perms = random_permutations(spec, B, torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(flatten(params, spec))
        scale = float(ref.abs().max())
        torch.testing.assert_close(
            model(flatten(permute(params, spec, perms), spec)), ref, rtol=1e-5, atol=1e-5 * scale
        )
        rows = dict(params)  # rows of layer 0 permuted without the matching columns of layer 1
        rows["layers.0.weight"] = params["layers.0.weight"].flip(1)
        assert float((model(flatten(rows, spec)) - ref).abs().max()) > 1e-4 * scale
        inputs = dict(params)  # input neurons are not a symmetry: NP's position encoding must see them
        inputs["layers.0.weight"] = params["layers.0.weight"].flip(2)
        assert float((model(flatten(inputs, spec)) - ref).abs().max()) > 1e-4 * scale


def test_np_layer_is_smaller_than_hnp():
    spec = LAYOUTS["mlp2-5-4-3-1"]
    hnp = EquivariantLinear(spec, 4, 4)
    np_layer = EquivariantLinear(spec, 4, 4, permuted=set(range(spec.n_layers + 1)))
    n_params = [sum(t.numel() for t in layer.thetas) for layer in (np_layer, hnp)]
    assert 0 < n_params[0] < n_params[1]


@pytest.mark.parametrize("name", list(SIREN_LAYOUTS))
def test_untrained_encoder_keeps_the_differences_between_nets(name):
    """At initialization a 4-layer DWSNet trunk must still tell nets apart: every output entry
    varies across nets (std >= 0.02 for unit-variance inputs). With 1/T_B-averaged terms of
    1/sqrt(fan_in)-initialized maps it was ~4e-5, and DWSNet / NFN could not leave chance."""
    spec = SIREN_LAYOUTS[name]
    torch.manual_seed(0)
    enc = DWSEncoder(spec, hidden=16, layers=4)
    flat = flatten(random_params(spec, 64, seed=0), spec)
    with torch.no_grad():
        xs = enc(flat / flat.std())
    assert min(float(v.std(0).mean()) for v in xs.values()) > 0.02


def test_set_attention_replaces_the_deepsets_blocks_and_stays_equivariant():
    """``set_heads``: every block whose two tensors share exactly one hidden layer becomes a
    set-attention block (the reference's ``sab``), the others keep their linear terms; the layer
    is then non-linear and still permutation-equivariant, slot by slot."""
    spec = mlp_spec([2, 6, 5, 1])
    torch.manual_seed(0)
    linear = EquivariantLinear(spec, 4, 8).double()
    sab = EquivariantLinear(spec, 4, 8, set_heads=2).double()
    names = [s.name for s in sab.slots]
    pairs = {(names[b.src], names[b.dst]) for b in sab.set_blocks}
    assert ("layers.0.weight", "layers.0.bias") in pairs and ("layers.2.weight", "layers.1.bias") in pairs
    assert ("layers.1.weight", "layers.1.weight") not in pairs  # two shared hidden layers: linear
    assert ("layers.0.weight", "layers.2.weight") not in pairs  # none shared: pooled, linear
    # each set block replaces two linear terms (identity and pooled)
    assert len(sab.terms) + 2 * len(sab.set_blocks) == len(linear.terms)
    g = torch.Generator().manual_seed(2)
    xs = {s.name: torch.randn(B, *s.sizes, 4, generator=g, dtype=torch.float64) for s in sab.slots}
    perms = random_permutations(spec, B, torch.Generator().manual_seed(3))
    permuted_in = _permute_slots(xs, spec, perms)
    out, out_p = sab(xs), sab(permuted_in)
    for k, v in _permute_slots(out, spec, perms).items():
        torch.testing.assert_close(out_p[k], v)
    doubled = sab({k: 2 * v for k, v in xs.items()})
    bias = sab({k: torch.zeros_like(v) for k, v in xs.items()})
    assert any((doubled[k] - bias[k] - 2 * (out[k] - bias[k])).abs().max() > 1e-3 for k in out)  # not linear
