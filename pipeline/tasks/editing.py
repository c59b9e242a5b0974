r"""INR editing: change a SIREN's weights so that it represents its image, dilated.

An editor (:class:`~pipeline.models.dwsnet.DWSNetEditor`, :class:`~pipeline.models.dwsnet.NFNEditor`)
maps an INR's parameters :math:`\theta` to edited parameters :math:`\theta'` in the same flat
layout. The edited INR is rendered on the ``H x W`` grid it was fitted on and compared with
the target, the morphologically dilated original image:

.. math::
    \mathcal L_b = \frac{1}{HW}\sum_{p} \big(f_{\theta'_b}(x_p) - \mathrm{dilate}(I_b)_p\big)^2,\qquad
    \mathrm{dilate}(I)_p = \max_{q \in p + \{-1,0,1\}^2} I_q

Test MSE is reported as in the papers (DWSNets, NFN, Neural Graphs): the mean over pixels and
INRs of the test split, i.e. ``editing_loss(...).mean()`` over all test INRs (the published
numbers are this value times :math:`10^{2}`).

Everything here is differentiable in the parameters and batched over INRs (no Python loop over
nets), so the same functions serve as training loss and evaluation metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from pipeline.weightspace.normalize import Stats, invert_stats
from pipeline.weightspace.spec import ParamSpec, unflatten
from pipeline.zoo.siren import coordinate_grid, siren_forward

KERNEL = 3  # 3x3 structuring element, one iteration (the papers' dilation task)


def dilate(images: Tensor) -> Tensor:
    """Grey-scale dilation with a flat 3x3 structuring element, one iteration.

    A 3x3 maximum filter; pixels outside the image are ignored (same as ``cv2.dilate`` and
    ``scipy.ndimage.grey_dilation`` defaults for a flat element), so the size is kept.

    Shapes: ``(B, H, W)`` -> ``(B, H, W)``.
    """
    out = nn.functional.max_pool2d(images.unsqueeze(1), KERNEL, stride=1, padding=KERNEL // 2)
    return out.squeeze(1)


def render_sirens(
    flat_params: Tensor,
    spec: ParamSpec,
    omega0: float,
    offset: float,
    height: int = 28,
    width: int = 28,
    stats: Stats | None = None,
) -> Tensor:
    """Render every SIREN of a batch on the ``[-1, 1]^2`` pixel grid, differentiably.

    Args:
        flat_params: ``(B, P)`` in :func:`~pipeline.weightspace.spec.flatten` order.
        spec: their SIREN layout.  omega0, offset: the zoo's ``omega0`` and output offset
            (:func:`~pipeline.zoo.siren.output_offset`).
        height, width: the grid (:func:`~pipeline.zoo.siren.coordinate_grid`, row-major, the
            one the zoo was fitted on).
        stats: if the parameters are normalized (:mod:`pipeline.weightspace.normalize`), the
            statistics to undo first; ``None`` for raw parameters.
    Returns:
        ``(B, H, W)`` for one output channel, ``(B, H, W, C)`` otherwise.
    """
    params = unflatten(flat_params, spec)
    if stats is not None:
        params = invert_stats(params, spec, stats)
    # made on the CPU; a non-blocking copy, so a step on an accelerator does not wait for the host
    coords = coordinate_grid(height, width).to(flat_params, non_blocking=True)
    pixels = siren_forward(params, spec, coords, omega0, offset)  # (B, H*W, C)
    images = pixels.reshape(flat_params.shape[0], height, width, pixels.shape[-1])
    return images.squeeze(-1) if images.shape[-1] == 1 else images


def editing_loss(
    edited_flat: Tensor,
    spec: ParamSpec,
    target_images: Tensor,
    omega0: float,
    offset: float,
    stats: Stats | None = None,
) -> Tensor:
    """Per-INR MSE between the rendered edited INR and its target image.

    Args:
        edited_flat: ``(B, P)`` edited parameters (normalized if ``stats`` is given).
        spec, omega0, offset, stats: as :func:`render_sirens`.
        target_images: ``(B, H, W)`` (e.g. ``dilate(images)``); the grid size is read from it.
    Returns:
        ``(B,)``: mean over pixels per INR. Reported test MSE = mean of this over every test INR.
    """
    rendered = render_sirens(edited_flat, spec, omega0, offset, target_images.shape[1], target_images.shape[2], stats)
    return (rendered - target_images).square().flatten(1).mean(dim=1)


@dataclass(frozen=True)
class Editing:
    """The editing objective of :func:`pipeline.train.fit_model`: minimize the editing MSE.

    ``out`` is an editor's ``(B, P)`` edited parameters (normalized with ``stats``), ``y`` the
    ``(B, H, W)`` target images. Selection is on the lowest validation ``mse``; ``mse`` is the
    papers' test metric (mean over pixels and INRs).
    """

    spec: ParamSpec
    omega0: float
    offset: float
    stats: Stats
    select: str = "mse"
    maximize: bool = False

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean editing MSE, a 0-dim tensor on ``out``'s device (no host synchronisation)."""
        return editing_loss(out, self.spec, y, self.omega0, self.offset, self.stats).mean()

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        """``loss`` and ``mse`` (the same value) as Python floats (reads the device: evaluation only)."""
        mse = float(self.loss(out, y))
        return {"loss": mse, "mse": mse}
