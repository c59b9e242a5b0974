"""Kolmogorov-Arnold networks (pykan's parametrization), evaluated and trained many at once.

A KAN with neuron layers ``n_0 -> n_1 -> ... -> n_L`` computes, for layer ``l``,

    h_{l+1, j} = sum_i phi_{l, j, i}(h_{l, i}),
    phi_{l, j, i}(x) = scale_base[j, i] * silu(x) + scale_sp[j, i] * sum_m coef[j, i, m] B_m(x; grid[i])

where ``B_m( . ; grid[i])`` are the ``G + k`` B-splines of order ``k`` on the ``G + 2k + 1``
knots of source node ``i`` (pykan's ``B_batch``: Cox-de Boor recursion, zero outside the knots).
Nodes carry no bias (pykan's default ``node_bias`` / ``subnode_bias`` are 0 and its scales 1).

Spec layout (:func:`kan_spec`), every tensor with a leading net axis ``B``:

* ``layers.{l}.coef``       ``(n_{l+1}, n_l, G + k)``  axes ``(l+1, l, None)``  edge
* ``layers.{l}.scale_base`` ``(n_{l+1}, n_l)``         axes ``(l+1, l)``        edge
* ``layers.{l}.scale_sp``   ``(n_{l+1}, n_l)``         axes ``(l+1, l)``        edge
* ``layers.{l}.grid``       ``(n_l, G + 2k + 1)``      axes ``(l, None)``       node (source)

Edge tensors are destination-major like an ``nn.Linear`` weight; pykan stores them
source-major (``(in, out, ...)``), :mod:`pipeline.zoo.pykan_io` transposes. Permuting hidden
node ``i`` of layer ``l`` moves row ``i`` of layer ``l-1``'s edge tensors, column ``i`` of layer
``l``'s and row ``i`` of layer ``l``'s grid: the spec's axis tags say exactly that, so
:func:`pipeline.weightspace.spec.permute` needs nothing KAN-specific.

:func:`train_kans` fits ``B`` KANs in one process with a leading model axis on every tensor
(per layer one batched matrix product for the SiLU term and one spline sum, no Python loop
over nets) and Adam with per-net learning rates and weight decays, the arithmetic of
``torch.optim.Adam``. On CPU the spline sum on uniform knots is a fused C++ kernel
(``csrc/kan_spline.cpp``, :func:`spline_kernel`) that touches only the ``k + 1`` non-zero
splines of each input; elsewhere it is a dense basis times a batched matrix product.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from pipeline.optim import AdamSettings, adam_update
from pipeline.provenance import cpu_tag
from pipeline.weightspace.spec import Params, ParamSpec, TensorSpec

log = logging.getLogger(__name__)


TRAINABLE = ("coef", "scale_base", "scale_sp")


def kan_spec(layer_sizes: list[int] | tuple[int, ...], grid_size: int, order: int = 3) -> ParamSpec:
    """Spec of a KAN ``n_0 -> ... -> n_L`` with ``grid_size`` intervals and spline ``order``."""
    sizes = tuple(int(s) for s in layer_sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"a KAN needs at least 2 non-empty neuron layers, got {sizes}")
    if grid_size < 1 or order < 0:
        raise ValueError(f"grid_size must be >= 1 and order >= 0, got {grid_size}, {order}")
    n_coef, n_knots = grid_size + order, grid_size + 2 * order + 1
    tensors = []
    for l in range(len(sizes) - 1):
        o, i = sizes[l + 1], sizes[l]
        tensors += [
            TensorSpec(f"layers.{l}.coef", (o, i, n_coef), (l + 1, l, None), "edge"),
            TensorSpec(f"layers.{l}.scale_base", (o, i), (l + 1, l), "edge"),
            TensorSpec(f"layers.{l}.scale_sp", (o, i), (l + 1, l), "edge"),
            TensorSpec(f"layers.{l}.grid", (i, n_knots), (l, None), "node"),
        ]
    return ParamSpec("kan", sizes, tuple(tensors))


def kan_grid_order(spec: ParamSpec) -> tuple[int, int]:
    """``(G, k)`` of a KAN spec, read from the coefficient and knot counts."""
    n_coef = spec.tensor("layers.0.coef").shape[-1]
    n_knots = spec.tensor("layers.0.grid").shape[-1]
    k = n_knots - n_coef - 1
    return n_coef - k, k


def uniform_grid(n_nodes: int, grid_size: int, order: int, lo: float = -1.0, hi: float = 1.0) -> Tensor:
    """pykan's initial knots: ``G + 1`` uniform points on ``[lo, hi]`` extended by ``k`` per side.

    Returns ``(n_nodes, G + 2k + 1)``.
    """
    h = (hi - lo) / grid_size
    knots = lo + h * torch.arange(-order, grid_size + order + 1, dtype=torch.float64)
    return knots.float().expand(n_nodes, -1).clone()


def b_splines(x: Tensor, grid: Tensor, order: int) -> Tensor:
    """B-spline basis values, batched over nets (pykan's ``B_batch`` arithmetic).

    Args:
        x: ``(B, N, n)`` inputs of ``n`` source nodes at ``N`` points.
        grid: ``(B, n, K)`` knots per source node (``K = G + 2k + 1``).
        order: spline order ``k``.
    Returns:
        ``(B, N, n, G + k)``; all zero outside ``[grid[0], grid[-1])``.
    """
    g = grid.unsqueeze(1)  # (B, 1, n, K)
    xx = x.unsqueeze(-1)  # (B, N, n, 1)
    value = ((xx >= g[..., :-1]) & (xx < g[..., 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (xx - g[..., : -(p + 1)]) / (g[..., p:-1] - g[..., : -(p + 1)]) * value[..., :-1]
        right = (g[..., p + 1 :] - xx) / (g[..., p + 1 :] - g[..., 1:-p]) * value[..., 1:]
        value = torch.nan_to_num(left + right)
    return value


@functools.cache
def _cardinal_matrix(order: int) -> Tensor:
    """``M`` with ``[M_k(u + r)]_{r=0..k} = [1, u, .., u^k] @ M`` for ``u`` in ``[0, 1)``.

    ``M_k`` is the cardinal B-spline of order ``k`` (support ``[0, k + 1]``), obtained from
    ``M_p(s) = (s M_{p-1}(s) + (p + 1 - s) M_{p-1}(s - 1)) / p`` on ``k + 1`` sample points.
    """
    u = torch.linspace(0.05, 0.95, order + 1, dtype=torch.float64)
    vals = [torch.ones_like(u)]
    for p in range(1, order + 1):
        vals = [
            ((u + r) * (vals[r] if r < p else 0) + (p + 1 - u - r) * (vals[r - 1] if r >= 1 else 0)) / p
            for r in range(p + 1)
        ]
    vander = torch.stack([u**e for e in range(order + 1)], dim=1)
    return torch.linalg.solve(vander, torch.stack(vals, dim=1)).float()


@functools.cache
def _spline_polynomials(order: int, h: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(M, dM, shifts)``: the spline pieces, their ``x``-derivatives and column offsets.

    ``[1, u, .., u^k] @ M`` are the values of the ``k + 1`` splines a point at offset ``u`` in its
    knot interval touches, ``[1, .., u^(k-1)] @ dM`` their derivatives in ``x`` (knot spacing
    ``h``), ``shifts[r] = 1 - r`` the column of spline ``j - r`` relative to interval ``j``.
    """
    M = _cardinal_matrix(order)
    dM = M[1:] * torch.arange(1, order + 1, dtype=M.dtype).unsqueeze(1) / h
    return M.contiguous(), dM.contiguous(), 1 - torch.arange(order + 1)


@functools.cache
def _spline_polynomials_on(order: int, h: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """:func:`_spline_polynomials` on ``device`` in ``dtype``, copied there once (not every step)."""
    M, dM, shifts = _spline_polynomials(order, h)
    return M.to(device, dtype), dM.to(device, dtype), shifts.to(device)


class _UniformBSplines(torch.autograd.Function):
    """B-spline basis on the uniform knots ``lo + h * (m - k)``, ``m = 0 .. G + 2k``.

    A point in knot interval ``j`` at local offset ``u`` touches splines ``m = j - r``
    (``r = 0..k``) with values ``[1, u, .., u^k] @ M`` (:func:`_cardinal_matrix`). They are
    put into a ``(..., C + 2)`` buffer whose first and last columns collect the out-of-range
    splines (several may land on one junk entry; which one wins does not matter); the caller
    gives those columns zero weights, so no slicing copy is needed and their gradient is
    exactly 0. The backward pass takes the same ``k + 1`` entries of the incoming gradient and
    contracts them with the derivative polynomial. ``O(k)`` work per input, a handful of
    whole-tensor operations (one ``put_`` / ``take`` on flat indices, faster on CPU
    than ``scatter_`` / ``gather``), no autograd graph through a recursion.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, h: float, grid_size: int, order: int) -> Tensor:
        k, C = order, grid_size + order
        M, dM, shifts = _spline_polynomials_on(k, h, x.device, x.dtype)
        t = (x - (lo - k * h)) / h  # in knot units from the first knot
        j = t.floor()
        u = t - j
        cols = [torch.ones_like(u), u]
        for _ in range(k - 1):
            cols.append(cols[-1] * u)
        powers = torch.stack(cols[: k + 1], dim=-1)  # (..., k + 1): 1, u, .., u^k
        # spline j - r sits in column j - r + 1; out-of-range ones land in junk columns 0, C + 1
        row = torch.arange(0, x.numel() * (C + 2), C + 2, device=x.device).view(*x.shape, 1)
        idx = (j.long().unsqueeze(-1) + shifts).clamp_(0, C + 1).add_(row)  # (..., k + 1) flat
        out = x.new_zeros(*x.shape, C + 2)
        out.put_(idx, powers @ M)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(idx, powers[..., :k] @ dM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        idx, deriv = ctx.saved_tensors
        gx = (grad.contiguous().take(idx) * deriv).sum(-1)
        return gx, None, None, None, None


def uniform_b_splines(x: Tensor, lo: float, hi: float, grid_size: int, order: int) -> Tensor:
    """:func:`b_splines` for the knots of :func:`uniform_grid`, much faster, with two junk columns.

    Args:
        x: any shape ``S``.
    Returns:
        ``(*S, G + k + 2)``, differentiable w.r.t. ``x``: columns ``1 .. G + k`` equal
        :func:`b_splines`; columns 0 and ``G + k + 1`` hold junk that must meet zero weights
        (:func:`kan_layer` pads them).
    """
    return _UniformBSplines.apply(x, lo, (hi - lo) / grid_size, grid_size, order)


STALE_BATON_SECONDS = 600  # without flock (not POSIX): a baton this old is taken to be a killed build's


def _kernel_build_dir(name: str) -> Path:
    """Where :func:`torch.utils.cpp_extension.load` builds extension ``name``
    (``$TORCH_EXTENSIONS_DIR/<name>`` or ``~/.cache/torch_extensions/py<ver>_<accel>/<name>``)."""
    from torch.utils import cpp_extension

    try:
        return Path(cpp_extension._get_build_directory(name, verbose=False))
    except AttributeError:  # torch moved its private helper: same layout, CPU build
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
            cpp_extension.get_default_build_root(), f"py{sys.version_info.major}{sys.version_info.minor}_cpu"
        )
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        return Path(root) / name


def _stable_source(build_dir: Path) -> Path:
    """The kernel's C++ source as a file in ``build_dir``, rewritten only when its bytes change.

    A Ray worker imports the project from a per-session copy of the checkout; building from that
    path would rebuild the kernel in every session (the build depends on the source's path).
    Call under :func:`_build_lock`."""
    code = (Path(__file__).parent / "csrc" / "kan_spline.cpp").read_bytes()
    kept = build_dir / "kan_spline.cpp"
    if not kept.exists() or kept.read_bytes() != code:
        tmp = kept.with_suffix(".cpp.tmp")
        tmp.write_bytes(code)
        tmp.replace(kept)
    return kept


@contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the kernel's build directory; clear a killed build's baton.

    torch serializes builds with a ``lock`` file in ``build_dir`` (its ``FileBaton``) that the
    builder deletes when done: a build killed midway leaves it, and every later ``load`` waits
    for it forever. Every metazoo build therefore first takes an ``flock`` on
    ``build_dir/metazoo_build.flock``, which the kernel releases when its holder dies; whoever
    holds it and still finds torch's ``lock`` knows that no live build owns it and removes it.
    Where ``flock`` is missing (not POSIX), a baton older than :data:`STALE_BATON_SECONDS` is
    taken to be stale.
    """
    baton = build_dir / "lock"
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None:
        try:
            age = time.time() - baton.stat().st_mtime
        except OSError:
            age = None
        if age is not None and age > STALE_BATON_SECONDS:
            _remove_stale_baton(baton, f"it is {age / 60:.0f} minutes old")
        yield
        return
    with open(build_dir / "metazoo_build.flock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("KAN spline kernel: waiting for another process building it in %s", build_dir)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if baton.exists():
                _remove_stale_baton(baton, "no live build holds the build lock")
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_baton(baton: Path, why: str) -> None:
    baton.unlink(missing_ok=True)
    log.warning(
        "KAN spline kernel: removed the stale build lock %s left by a killed build (%s); rebuilding", baton, why
    )


@functools.cache
def spline_kernel():
    """The fused C++ spline kernel (``csrc/kan_spline.cpp``), built once per machine, or ``None``.

    Built by :func:`torch.utils.cpp_extension.load` for this CPU (``-O3 -march=native``, OpenMP;
    cached under ``~/.cache/torch_extensions`` with the CPU's hash in its name, so a shared home
    never hands one machine's build to another). Needs a C++ compiler: where the build fails,
    or with ``METAZOO_KAN_KERNEL=0``, the PyTorch path is used (with a warning for a failed build).
    Both compute the same function to float32 rounding (``tests/test_kan_zoo.py``). Builds are
    serialized by :func:`_build_lock`, so one killed midway does not make the next wait forever.
    """
    if os.environ.get("METAZOO_KAN_KERNEL", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        name = f"metazoo_kan_spline_{cpu_tag()}"  # built for this CPU's instructions
        build_dir = _kernel_build_dir(name)
        with _build_lock(build_dir):
            return load(
                name,
                [str(_stable_source(build_dir))],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
    except Exception as err:  # no compiler, no headers, no OpenMP: the PyTorch path still works
        warnings.warn(f"KAN spline kernel unavailable ({err}); using the PyTorch path", stacklevel=2)
        return None


def kan_backend() -> str:
    """``"fused-cpu"`` where :func:`uniform_spline_part` runs the C++ kernel on CPU float32, else ``"torch"``."""
    return "fused-cpu" if spline_kernel() is not None else "torch"


class _FusedUniformSpline(torch.autograd.Function):
    """``y[b, n, o] = sum_{i, m} w[b, o, i, m] B_m(h[b, n, i])`` on uniform knots, by the C++ kernel.

    Visits only the ``k + 1`` splines each input touches (no dense basis), forward and
    backward; ``h`` ``(B, N, I)``, ``w`` ``(B, O, I, C)`` -> ``(B, N, O)``. Each net is
    computed by one thread in a fixed order: the result does not depend on the thread count.
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, lo: float, step: float, grid_size: int, order: int) -> Tensor:
        M, dM, _ = _spline_polynomials(order, step)
        wt = w.permute(0, 2, 3, 1).contiguous()  # (B, I, C, O): one spline's outputs contiguous
        h = h.contiguous()
        ctx.save_for_backward(h, wt)
        ctx.consts = (M, dM, lo, step, grid_size, order)
        return spline_kernel().forward(h, wt, M, lo, step, grid_size, order)

    @staticmethod
    def backward(ctx, gy: Tensor):
        h, wt = ctx.saved_tensors
        M, dM, lo, step, grid_size, order = ctx.consts
        need_gh = ctx.needs_input_grad[0]
        gh, gwt = spline_kernel().backward(gy.contiguous(), h, wt, M, dM, lo, step, grid_size, order, need_gh)
        return (gh if need_gh else None), gwt.permute(0, 3, 1, 2), None, None, None, None


def dense_spline_part(basis: Tensor, w: Tensor) -> Tensor:
    """``sum_{i, m} w[b, o, i, m] basis[b, n, i, m]``: one batched matrix product.

    Args:
        basis: ``(B, N, I, C)`` or shared ``(N, I, C)`` (:func:`b_splines`), or with ``C + 2``
            columns (:func:`uniform_b_splines`; its junk columns meet zero weights here).
        w: ``(B, O, I, C)``.
    Returns:
        ``(B, N, O)``.
    """
    if basis.shape[-1] == w.shape[-1] + 2:
        w = torch.nn.functional.pad(w, (1, 1))
    return torch.matmul(basis.flatten(-2), w.reshape(*w.shape[:2], -1).transpose(1, 2))


def uniform_spline_part(
    h: Tensor, w: Tensor, lo: float, hi: float, grid_size: int, order: int, fused: bool = True
) -> Tensor:
    """``sum_{i, m} w[b, o, i, m] B_m(h[b, n, i])`` for the knots of :func:`uniform_grid` on ``[lo, hi]``.

    Args:
        h: ``(B, N, I)``, or ``(N, I)`` shared by every net.
        w: ``(B, O, I, G + k)`` spline weights (``scale_sp * coef``).
        fused: use the C++ kernel (:func:`spline_kernel`) for per-net CPU float32 inputs where
            it is built; ``False`` forces :func:`uniform_b_splines` + :func:`dense_spline_part`.
    Returns:
        ``(B, N, O)``.
    """
    # a shared input (a zoo's common points in layer 0) is best served by one dense basis for
    # every net and a broadcast matrix product; per-net inputs by the kernel
    per_net = h.dim() == 3
    cpu32 = h.device.type == "cpu" and h.dtype == w.dtype == torch.float32
    if fused and per_net and cpu32 and spline_kernel() is not None:
        return _FusedUniformSpline.apply(h, w, lo, (hi - lo) / grid_size, grid_size, order)
    return dense_spline_part(uniform_b_splines(h, lo, hi, grid_size, order), w)


def kan_layer(
    h: Tensor, coef: Tensor, scale_base: Tensor, scale_sp: Tensor, spline: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """One KAN layer for a batch of nets.

    ``y[b, :, j] = sum_i scale_base[b, j, i] silu(h[b, :, i])
    + sum_{i, m} scale_sp[b, j, i] coef[b, j, i, m] B_m(h[b, :, i])``

    Args:
        h: ``(B, N, n_in)``, or ``(N, n_in)`` shared by every net.
        coef: ``(B, n_out, n_in, C)``; scale_base, scale_sp ``(B, n_out, n_in)``.
        spline: ``(h, w) -> (B, N, n_out)``, the spline sum for weights ``w = scale_sp * coef``
            (:func:`uniform_spline_part`, or :func:`dense_spline_part` on :func:`b_splines`).
    Returns:
        ``(B, N, n_out)``.
    """
    out = torch.matmul(torch.nn.functional.silu(h), scale_base.transpose(1, 2))
    return out + spline(h, scale_sp.unsqueeze(-1) * coef)


def _grid_spline_part(h: Tensor, w: Tensor, grid: Tensor, order: int) -> Tensor:
    """Spline sum on each net's and node's own knots ``grid`` ``(B, I, K)``."""
    return dense_spline_part(b_splines(h, grid, order), w)


def kan_forward(params: Params, spec: ParamSpec, x: Tensor, uniform: tuple[float, float] | None = None) -> Tensor:
    """Outputs of every net: ``x`` ``(N, n_0)`` shared or ``(B, N, n_0)`` -> ``(B, N, n_L)``.

    ``uniform=(lo, hi)`` promises that every grid is :func:`uniform_grid` on ``[lo, hi]`` (the
    zoo's fixed knots) and switches to :func:`uniform_spline_part`; otherwise each net's and
    node's own knots are used.
    """
    G, k = kan_grid_order(spec)
    B = params["layers.0.coef"].shape[0]
    h = x
    for l in range(spec.n_layers):
        p = f"layers.{l}."
        if uniform is not None:
            spline = functools.partial(uniform_spline_part, lo=uniform[0], hi=uniform[1], grid_size=G, order=k)
        else:
            h = h.expand(B, *h.shape) if h.dim() == 2 else h
            spline = functools.partial(_grid_spline_part, grid=params[p + "grid"], order=k)
        h = kan_layer(h, params[p + "coef"], params[p + "scale_base"], params[p + "scale_sp"], spline)
    return h


def init_kans(spec: ParamSpec, seeds: list[int], noise_scale: float = 0.5, grid_range=(-1.0, 1.0)) -> Params:
    """pykan's initialization, net ``b`` drawn from ``torch.Generator(seeds[b])``.

    Knots uniform on ``grid_range`` (extended by ``k``); ``coef`` the least-squares
    (minimum-norm) spline through uniform noise of amplitude ``noise_scale / G`` at the ``G + 1``
    grid points; ``scale_base ~ U(-1, 1) / sqrt(n_in)``; ``scale_sp = 1 / sqrt(n_in)``.
    """
    G, k = kan_grid_order(spec)
    B = len(seeds)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out: Params = {}
    knots = uniform_grid(1, G, k, *grid_range)
    pinv = torch.linalg.pinv(b_splines(knots[:, k:-k].reshape(1, -1, 1), knots.unsqueeze(0), k)[0, :, 0, :])
    for l in range(spec.n_layers):
        o, i = spec.layer_sizes[l + 1], spec.layer_sizes[l]
        noise = torch.stack([(torch.rand(G + 1, o, i, generator=g) - 0.5) * noise_scale / G for g in gens])
        out[f"layers.{l}.coef"] = torch.einsum("cp,bpoi->boic", pinv, noise).contiguous()
        base = torch.stack([torch.rand(o, i, generator=g) * 2 - 1 for g in gens])
        out[f"layers.{l}.scale_base"] = base / math.sqrt(i)
        out[f"layers.{l}.scale_sp"] = torch.full((B, o, i), 1.0 / math.sqrt(i))
        out[f"layers.{l}.grid"] = uniform_grid(i, G, k, *grid_range).expand(B, i, -1).clone()
    return {t.name: out[t.name] for t in spec.tensors}


def train_kans(
    params: Params,
    spec: ParamSpec,
    loss_fn: Callable[[Params], Tensor],
    settings: AdamSettings,
    lr: Tensor,
    weight_decay: Tensor | None = None,
    steps: Tensor | None = None,
) -> tuple[Params, Tensor]:
    """Train ``B`` KANs at once; the knots stay fixed (no grid update).

    Args:
        params: initial zoo batch (not modified).
        loss_fn: ``params -> (B,)`` per-net loss; nets must not interact (so the summed loss's
            gradient w.r.t. net ``b`` is net ``b``'s own gradient).
        lr: ``(B,)`` learning rates.
        weight_decay: ``(B,)`` L2 coefficients added to the gradient (``torch.optim.Adam``'s
            ``weight_decay``), default 0.
        steps: ``(B,)`` per-net step counts ``<= settings.steps`` (a finished net's learning
            rate drops to 0, so it no longer moves); default ``settings.steps`` for all.
    Returns:
        ``(trained params, (B,) loss at the last step before the final update)``.
    """
    B = lr.shape[0]
    names = [t.name for t in spec.tensors if t.name.rsplit(".", 1)[1] in TRAINABLE]
    shapes = [params[n].shape[1:] for n in names]
    sizes = [math.prod(s) for s in shapes]
    # one (B, D) leaf: Adam is a handful of ops per step whatever the number of tensors
    flat = torch.cat([params[n].reshape(B, -1) for n in names], dim=1).requires_grad_(True)
    fixed = {n: v for n, v in params.items() if n not in names}

    def unflatten(f: Tensor) -> Params:
        return {n: p.view(B, *s) for n, p, s in zip(names, f.split(sizes, dim=1), shapes, strict=True)}

    m, v2 = torch.zeros_like(flat), torch.zeros_like(flat)
    wd = None if weight_decay is None else weight_decay.view(B, 1)
    loss = torch.full((B,), float("nan"), device=flat.device)
    for step in range(1, settings.steps + 1):
        step_lr = lr if steps is None else torch.where(steps >= step, lr, 0.0)
        per_net = loss_fn({**fixed, **unflatten(flat)})
        (g,) = torch.autograd.grad(per_net.sum(), [flat])
        loss = per_net.detach()
        with torch.no_grad():
            adam_update(flat, g, m, v2, step, step_lr, settings, wd)
    out = {**fixed, **{n: p.detach().clone() for n, p in unflatten(flat).items()}}
    return {t.name: out[t.name] for t in spec.tensors}, loss
