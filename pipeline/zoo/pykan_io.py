"""Exchange KANs with pykan (``kan.KAN``, pykan 0.2.x) in both directions.

Our representation (:mod:`pipeline.zoo.kan`) stores edge tensors destination-major,
``(n_out, n_in, ...)``, with a leading net axis; pykan's ``act_fun.{l}`` stores them source-major,
``(in, out, ...)``. Knots are per source node in both (``(n_in, G + 2k + 1)``).

* :func:`to_pykan` builds a real pykan model for one net of a zoo batch (mask 1, node and
  subnode scale 1 and bias 0, symbolic branch inert) computing the same function.
* :func:`from_pykan` reads any pykan model (also one trained by its own ``fit`` with grid updates)
  through ``model.state_dict()``. pykan's edge ``mask`` and its per-destination ``subnode_scale``
  and ``node_scale`` are folded into ``scale_base`` and ``scale_sp`` (exact: a node sums its edges'
  outputs). What has no counterpart here is refused with a :class:`ValueError` naming the
  tensor: nonzero ``node_bias_{l}`` / ``subnode_bias_{l}``, multiplication nodes, an active
  symbolic branch, a base function other than SiLU, an input selection / reordering
  (``input_id``), or layers with different grid sizes or spline orders.
* :func:`quiet_pykan` wraps pykan calls: pykan's constructor reseeds the global torch, numpy and
  ``random`` generators and pykan prints (checkpoint messages, ``fit``'s progress bar); inside
  the context the prints are swallowed and on exit the generators are back where they were.

pykan is imported lazily (it pulls in matplotlib, sympy and pandas). Models are always built
with ``auto_save=False``, so no ``./model`` checkpoint directory is written.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from pipeline.weightspace.spec import Params, ParamSpec, check_params
from pipeline.zoo.kan import kan_grid_order, kan_spec

if TYPE_CHECKING:
    import kan

_TENSORS = ("coef", "scale_base", "scale_sp", "grid")


@contextlib.contextmanager
def quiet_pykan() -> Iterator[None]:
    """Run pykan code without its prints and without touching the global RNG states.

    Saves the torch (CPU, and CUDA when already initialized), numpy and Python ``random``
    generator states, redirects stdout and stderr (pykan's prints, tqdm's bar) to a buffer that is
    thrown away, and restores the generators on exit, also when the block raises.
    """
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def to_pykan(params: Params, spec: ParamSpec, index: int = 0) -> kan.KAN:
    """A pykan ``KAN`` computing net ``index`` of a KAN zoo batch.

    Args:
        params: zoo batch of ``spec`` (tensors ``(B, ...)``; any device, copied to CPU float32).
        spec: a :func:`pipeline.zoo.kan.kan_spec` layout.
        index: which net of the batch.
    Returns:
        ``kan.KAN(width=layer_sizes, grid=G, k=k, auto_save=False)`` on the CPU whose ``model(x)``
        equals ``kan_forward(params, spec, x)[index]``: our coefficients, scales and knots
        (transposed to pykan's ``(in, out, ...)``), mask ones, node / subnode scale 1 and bias 0,
        symbolic masks and affine parameters 0.
    """
    if spec.family != "kan":
        raise ValueError(f"to_pykan needs a KAN spec, got family {spec.family!r}")
    batch = check_params(params, spec)
    if not -batch <= index < batch:
        raise IndexError(f"net index {index} out of range for a batch of {batch}")
    grid_size, order = kan_grid_order(spec)
    from kan import KAN

    with quiet_pykan():
        model = KAN(width=list(spec.layer_sizes), grid=grid_size, k=order, base_fun="silu", seed=0, auto_save=False)
    state = model.state_dict()
    for l in range(spec.n_layers):
        ours = {name: params[f"layers.{l}.{name}"][index].detach().to("cpu", torch.float32) for name in _TENSORS}
        state[f"act_fun.{l}.coef"] = ours["coef"].permute(1, 0, 2)
        state[f"act_fun.{l}.scale_base"] = ours["scale_base"].T
        state[f"act_fun.{l}.scale_sp"] = ours["scale_sp"].T
        state[f"act_fun.{l}.grid"] = ours["grid"]
        state[f"act_fun.{l}.mask"] = torch.ones_like(state[f"act_fun.{l}.mask"])
        for name, fill in (("node_scale", 1.0), ("node_bias", 0.0), ("subnode_scale", 1.0), ("subnode_bias", 0.0)):
            state[f"{name}_{l}"] = torch.full_like(state[f"{name}_{l}"], fill)
        state[f"symbolic_fun.{l}.mask"] = torch.zeros_like(state[f"symbolic_fun.{l}.mask"])
        state[f"symbolic_fun.{l}.affine"] = torch.zeros_like(state[f"symbolic_fun.{l}.affine"])
    model.load_state_dict(state, strict=True)
    return model


def from_pykan(model: kan.KAN) -> tuple[Params, ParamSpec]:
    """Our representation (a batch of one net) of a pykan ``KAN``; the model is not modified.

    The knots are kept per source node (pykan's grid updates make them differ). ``mask`` (per
    edge) and ``subnode_scale_{l}`` times ``node_scale_{l}`` (per destination node of layer
    ``l``, i.e. acting on layer ``l``'s outputs) are multiplied into ``scale_base`` and
    ``scale_sp``.

    Raises:
        ValueError: naming the tensor or attribute that our KANs cannot represent (see the
            module docstring).
    """
    state = {name: value.detach() for name, value in model.state_dict().items()}
    sizes = _layer_sizes(model)
    if getattr(model, "base_fun_name", "silu") != "silu":
        raise ValueError(f"base_fun: only SiLU is representable, the model uses {model.base_fun_name!r}")
    input_id = getattr(model, "input_id", None)
    if input_id is not None and not torch.equal(input_id.long().cpu(), torch.arange(sizes[0])):
        raise ValueError(f"input_id: the model selects / reorders its inputs ({input_id.tolist()})")
    symbolic_on = bool(getattr(model, "symbolic_enabled", True))

    spec: ParamSpec | None = None
    params: Params = {}
    for l in range(len(sizes) - 1):
        coef, grid = state[f"act_fun.{l}.coef"], state[f"act_fun.{l}.grid"]
        order = grid.shape[-1] - coef.shape[-1] - 1
        grid_size = coef.shape[-1] - order
        if spec is None:
            spec = kan_spec(sizes, grid_size, order)
        elif (grid_size, order) != kan_grid_order(spec):
            raise ValueError(
                f"act_fun.{l}.grid: grid size / order {(grid_size, order)} differ from layer 0's {kan_grid_order(spec)}"
            )
        for name in (f"node_bias_{l}", f"subnode_bias_{l}"):
            if torch.any(state[name] != 0):
                raise ValueError(f"'{name}' is nonzero: node biases are not representable")
        if symbolic_on and torch.any(state[f"symbolic_fun.{l}.mask"] != 0):
            raise ValueError(f"'symbolic_fun.{l}.mask' is nonzero: the symbolic branch is active")
        dst_scale = state[f"subnode_scale_{l}"] * state[f"node_scale_{l}"]  # (n_out,)
        factor = state[f"act_fun.{l}.mask"].T * dst_scale[:, None]  # (n_out, n_in)
        layer = {
            "coef": coef.permute(1, 0, 2),
            "scale_base": state[f"act_fun.{l}.scale_base"].T * factor,
            "scale_sp": state[f"act_fun.{l}.scale_sp"].T * factor,
            "grid": grid,
        }
        for name, value in layer.items():
            params[f"layers.{l}.{name}"] = value.unsqueeze(0).clone().contiguous()
    assert spec is not None
    check_params(params, spec)
    return {t.name: params[t.name] for t in spec.tensors}, spec


def _layer_sizes(model: kan.KAN) -> list[int]:
    """Neurons per layer from ``model.width``; refuses multiplication nodes."""
    sizes = []
    for i, entry in enumerate(model.width):
        n_sum, n_mult = (int(entry), 0) if isinstance(entry, int | np.integer) else (int(entry[0]), int(entry[1]))
        if n_mult != 0:
            raise ValueError(f"width[{i}] = {list(entry)}: {n_mult} multiplication node(s) are not representable")
        sizes.append(n_sum)
    return sizes


def pykan_forward(model: kan.KAN, x: Tensor) -> Tensor:
    """``model(x)`` without gradients, prints or RNG side effects (a convenience for checks)."""
    with torch.no_grad(), quiet_pykan():
        return model(x)
