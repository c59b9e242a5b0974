"""Per-layer normalization of parameters, fitted on the training split.

One mean and one standard deviation per spec tensor (per layer, separately for weights and
biases). Per-neuron statistics would break the permutation symmetry; statistics from one
batch instead of the whole training split were a bug of earlier code.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.weightspace.spec import Params, ParamSpec

Stats = dict[str, tuple[float, float]]


def fit_stats(params: Mapping, spec: ParamSpec, eps: float = 1e-8) -> Stats:
    """``{tensor name: (mean, std)}`` over every net and entry of ``params``.

    For a sign-symmetric spec, a tensor with a hidden-neuron axis has mean zero by symmetry;
    its mean is fixed at 0 (an estimate would only add noise that breaks the symmetry of the
    normalized data) and the scale is the root mean square.
    """
    hidden = set(spec.hidden_layers)
    out: Stats = {}
    for t in spec.tensors:
        x = params[t.name].double()
        if spec.sign_symmetric and hidden & set(t.neuron_layers):
            out[t.name] = (0.0, float(x.square().mean().sqrt().clamp_min(eps)))
        else:
            out[t.name] = (float(x.mean()), float(x.std(correction=0).clamp_min(eps)))
    return out


def apply_stats(params: Mapping, spec: ParamSpec, stats: Stats) -> Params:
    """``(p - mean) / std`` per tensor; shapes unchanged."""
    return {t.name: (params[t.name] - stats[t.name][0]) / stats[t.name][1] for t in spec.tensors}


def invert_stats(params: Mapping, spec: ParamSpec, stats: Stats) -> Params:
    """Inverse of :func:`apply_stats`."""
    return {t.name: params[t.name] * stats[t.name][1] + stats[t.name][0] for t in spec.tensors}
