"""SIREN implicit neural representations, fitted many at once.

A SIREN with neuron layers ``n_0=2 -> n_1 -> ... -> n_L`` computes, for coordinates ``x``:

    h_0 = x,   h_l = sin(omega0 * (W_l h_{l-1} + b_l))  for l < L,   f(x) = W_L h_{L-1} + b_L + c

with ``c = 0.5`` for the DWSNets variant and ``0`` otherwise. Parameters follow
:func:`pipeline.weightspace.spec.mlp_spec`, so the zoo, graphs and models share one layout.

:func:`fit_sirens` trains a batch of ``B`` SIRENs with a hand-written forward/backward pass
and Adam on one flat ``(B, P)`` buffer: no autograd graph, no Python loop over nets, and
``omega0`` folded into the matrix products. Each net's trajectory depends only on its own
seed and image (batched matrix products reduce per net, and a net left alone in a batch gets a
ghost partner), so a net's bytes do not depend on which other nets share its chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.data import coordinate_grid, psnr_from_mse
from pipeline.optim import adam_update_one_lr
from pipeline.weightspace.spec import Params, ParamSpec, mlp_spec, unflatten

INIT_VARIANTS = ("standard", "dwsnets")
EARLY_STOP_EVERY = 10  # steps between the fitting loop's read-backs (finished nets leave the batch)


def siren_spec(hidden: list[int] | tuple[int, ...], in_dim: int = 2, out_dim: int = 1) -> ParamSpec:
    """Parameter spec of a SIREN ``in_dim -> hidden... -> out_dim`` (sin is odd: sign symmetric)."""
    return dataclasses.replace(mlp_spec((in_dim, *hidden, out_dim)), sign_symmetric=True)


def output_offset(variant: str) -> float:
    """Constant added to the SIREN output (the DWSNets data used +0.5)."""
    return 0.5 if variant == "dwsnets" else 0.0


@functools.cache
def grid_on(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """:func:`coordinate_grid` on ``device`` in ``dtype``, made once per size (a step that renders
    images never copies it from the host)."""
    return coordinate_grid(height, width).to(device, dtype)


def init_sirens(spec: ParamSpec, seeds: list[int], omega0: float, variant: str) -> Tensor:
    """Initial flat parameters ``(B, P)``, net ``b`` drawn from ``torch.Generator(seeds[b])``.

    ``standard`` (Sitzmann et al.): first layer ``U(-1/n_in, 1/n_in)``, later layers
    ``U(-sqrt(6/n_in)/omega0, +)``, biases ``U(-1/sqrt(n_in), +)`` (``nn.Linear``'s default).
    ``dwsnets``: every weight ``U(-sqrt(6/n_in)/omega0, +)``, biases zero, output ``+0.5``.
    """
    if variant not in INIT_VARIANTS:
        raise ValueError(f"unknown SIREN init variant {variant!r}; choose from {INIT_VARIANTS}")
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        parts = []
        for t in spec.tensors:
            fan_in = spec.layer_sizes[t.axes[-1]] if t.role == "edge" else spec.layer_sizes[t.axes[0] - 1]
            first = t.name.startswith("layers.0.")
            if t.role == "edge":
                bound = 1.0 / fan_in if (first and variant == "standard") else math.sqrt(6.0 / fan_in) / omega0
            else:
                bound = 0.0 if variant == "dwsnets" else 1.0 / math.sqrt(fan_in)
            parts.append((torch.rand(t.numel, generator=g) * 2.0 - 1.0) * bound)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def siren_forward(params: Params, spec: ParamSpec, coords: Tensor, omega0: float, offset: float = 0.0) -> Tensor:
    """Differentiable batched SIREN: coords ``(P, in)`` or ``(B, P, in)`` -> ``(B, P, out)``."""
    h = coords
    n = spec.n_layers
    for l in range(n):
        w, b = params[f"layers.{l}.weight"], params[f"layers.{l}.bias"]
        h = torch.matmul(h, w.transpose(1, 2)) + b.unsqueeze(1)
        if l < n - 1:
            h = torch.sin(omega0 * h)
    return h + offset


@dataclass(frozen=True)
class FitSettings:
    """How every INR of a zoo is fitted (all recorded in the zoo manifest)."""

    steps: int
    lr: float
    omega0: float
    variant: str
    target_psnr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class FitResult:
    """Fitted parameters ``(B, P)``, final per-net MSE and PSNR, steps used per net."""

    params: Tensor
    mse: Tensor
    psnr: Tensor
    steps: Tensor


class _BatchedSiren:
    """Manual forward/backward of ``B`` SIRENs on shared coordinates (no autograd)."""

    def __init__(self, spec: ParamSpec, coords: Tensor, omega0: float, offset: float):
        self.spec, self.coords, self.omega0, self.offset = spec, coords, omega0, offset

    def loss_and_grad(self, flat: Tensor, target: Tensor, grad: Tensor | None) -> Tensor:
        """Per-net MSE ``(B,)``; if ``grad`` is given, writes ``d mean-MSE_b / d theta_b`` into it.

        Shapes: flat ``(B, P)``, target ``(B, n_pix, out)``, grad ``(B, P)``.
        """
        p = unflatten(flat, self.spec)
        n, w0 = self.spec.n_layers, self.omega0
        hs, zs = [self.coords.unsqueeze(0).expand(flat.shape[0], -1, -1)], []
        for l in range(n - 1):
            w, b = p[f"layers.{l}.weight"], p[f"layers.{l}.bias"]
            # z = omega0 * (h W^T + b) in one fused product
            z = torch.baddbmm(b.unsqueeze(1), hs[-1], w.transpose(1, 2), beta=w0, alpha=w0)
            zs.append(z)
            hs.append(torch.sin(z))
        w, b = p[f"layers.{n - 1}.weight"], p[f"layers.{n - 1}.bias"]
        resid = torch.baddbmm(b.unsqueeze(1), hs[-1], w.transpose(1, 2))
        resid.add_(self.offset).sub_(target)
        mse = resid.square().mean(dim=(1, 2))
        if grad is None:
            return mse
        g = unflatten(grad, self.spec)
        g_out = resid.mul_(2.0 / (resid.shape[1] * resid.shape[2]))  # d loss / d output
        for l in range(n - 1, -1, -1):
            h = hs[l]
            # into a fresh buffer, then copied: MKL's kernel choice depends on where the output
            # lies, and a net's slot in the flat buffer depends on its batch position
            g[f"layers.{l}.weight"].copy_(torch.bmm(g_out.transpose(1, 2), h))
            torch.sum(g_out, dim=1, out=g[f"layers.{l}.bias"])
            if l == 0:
                break
            # d loss / d z_{l-1} = (g_out W_l) * omega0 * cos(z_{l-1}); omega0 folded into W
            w = p[f"layers.{l}.weight"] * w0
            g_h = torch.bmm(g_out, w)
            g_out = g_h.mul_(torch.cos_(zs[l - 1]))
        return mse


@dataclass
class Fitting:
    """The batch of :func:`fit_sirens`: ``R`` rows in flight, each the net ``active[r]`` (a row
    of ``final``), with its Adam state; ``final`` ``(B, P)``, ``final_mse`` and ``steps_used``
    ``(B,)`` hold every net's result, written when it first reaches its target."""

    theta: Tensor  # (R, P)
    m: Tensor  # (R, P)
    v: Tensor  # (R, P)
    grad: Tensor  # (R, P)
    active: Tensor  # (R,) long
    ghost: Tensor  # (R,) bool: a companion row whose results are discarded
    reached: Tensor  # (R,) bool: its net's target met, its result kept
    final: Tensor
    final_mse: Tensor
    steps_used: Tensor

    def drop_reached(self) -> bool:
        """Remove the rows whose net is finished (a lone net keeps one as its ghost); ``False``
        when no real net is left. Reads the flags back to the host."""
        keep = ~self.reached  # ghosts never reach: they stay
        if not bool((keep & ~self.ghost).any()):
            self.active, self.ghost, self.reached = self.active[:0], self.ghost[:0], self.reached[:0]
            return False
        if int(keep.sum()) == 1:
            spare = int(torch.nonzero(~keep)[0])
            keep[spare], self.ghost[spare] = True, True
        for name in ("theta", "m", "v", "grad", "active", "ghost", "reached"):
            setattr(self, name, getattr(self, name)[keep])
        return True


def fitting_step(model: _BatchedSiren, f: Fitting, target: Tensor, step: int, settings: FitSettings) -> None:
    """One step of :func:`fit_sirens` in place: every row's loss and gradient on its image
    (``target`` ``(B, n_pix, out)``), the result of each net first reaching the target PSNR kept
    (its parameters before this step's update, ``steps_used = step - 1``), then Adam. Nothing is
    read back to the host."""
    mse = model.loss_and_grad(f.theta, target[f.active], f.grad)
    first = (mse <= 10.0 ** (-settings.target_psnr / 10.0)) & ~f.ghost & ~f.reached
    f.final[f.active] = torch.where(first.unsqueeze(1), f.theta, f.final[f.active])
    f.final_mse[f.active] = torch.where(first, mse, f.final_mse[f.active])
    f.steps_used[f.active] = torch.where(first, step - 1, f.steps_used[f.active])
    f.reached |= first
    adam_update_one_lr(f.theta, f.grad, f.m, f.v, step, settings.lr, settings.betas, settings.eps)


def fit_sirens(
    images: Tensor,
    seeds: list[int],
    spec: ParamSpec,
    settings: FitSettings,
    coords: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Fit one SIREN per image, all at once.

    Args:
        images: ``(B, H, W)`` grayscale in ``[0, 1]`` (or ``(B, n_pix, out)`` with ``coords``).
        seeds: one initialization seed per net.
        spec: SIREN layout (:func:`siren_spec`).
        settings: steps, Adam lr, omega0, init variant, early-stop PSNR.
        coords: ``(n_pix, in)``; default the ``[-1, 1]^2`` grid of the images.
        device: where the nets are fitted (initial values are drawn on the CPU, so they are the
            same on every device); results come back on the CPU.
    Returns:
        :class:`FitResult`. A net stops at the first step its PSNR reaches
        ``settings.target_psnr``; its parameters at that step are kept (on the device, without a
        read-back). Every :data:`EARLY_STOP_EVERY` steps one flag is read back and finished nets
        leave the batch; a net's bytes do not depend on when that happens (nor on its partners).
    """
    device = torch.device(device)
    if coords is None:
        coords = coordinate_grid(images.shape[1], images.shape[2])
        target = images.reshape(images.shape[0], -1, 1).float()
    else:
        target = images.float()
    target = target.to(device)
    B = target.shape[0]
    model = _BatchedSiren(spec, coords.float().to(device), settings.omega0, output_offset(settings.variant))
    theta = init_sirens(spec, seeds, settings.omega0, settings.variant).to(device)
    # CPU bmm reduces a batch of one in another order than a batch of >= 2, so a lone net is
    # kept company by a "ghost" row whose results are discarded: bytes never depend on partners.
    ghost = torch.zeros(B, dtype=torch.bool, device=device)
    if B == 1:
        theta, target = theta.repeat(2, 1), target.repeat(2, 1, 1)
        ghost = torch.tensor([False, True], device=device)
    rows = len(theta)
    f = Fitting(
        theta=theta,
        m=torch.zeros_like(theta),
        v=torch.zeros_like(theta),
        grad=torch.empty_like(theta),
        active=torch.arange(rows, device=device),
        ghost=ghost,
        reached=torch.zeros_like(ghost),
        final=theta.clone(),
        final_mse=torch.full((rows,), float("nan"), device=device),
        steps_used=torch.full((rows,), settings.steps, dtype=torch.long, device=device),
    )
    for step in range(1, settings.steps + 1):
        fitting_step(model, f, target, step, settings)
        if step % EARLY_STOP_EVERY == 0 and bool(f.reached.any()) and not f.drop_reached():  # the one read-back
            break
    real = ~f.ghost & ~f.reached  # still fitting at the last step
    if bool(real.any()):
        idx = f.active[real]
        f.final[idx] = f.theta[real]
        f.final_mse[idx] = model.loss_and_grad(f.theta, target[f.active], None)[real]
    final, final_mse, steps_used = f.final, f.final_mse, f.steps_used
    final, final_mse, steps_used = final[:B].cpu(), final_mse[:B].cpu(), steps_used[:B].cpu()
    return FitResult(final, final_mse, psnr_from_mse(final_mse), steps_used)
