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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.data import load_images
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import fingerprint, read_json
from pipeline.runs import GraphData, Task
from pipeline.tasks.job import Extras, Fitting, JobKind
from pipeline.train import RunResult
from pipeline.weightspace.normalize import Stats, invert_stats
from pipeline.weightspace.spec import ParamSpec, flatten, unflatten
from pipeline.zoo.siren import grid_on, siren_forward
from pipeline.zoo.store import read_manifest

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
        height, width: the grid (:func:`~pipeline.zoo.siren.grid_on`, row-major, the
            one the zoo was fitted on).
        stats: if the parameters are normalized (:mod:`pipeline.weightspace.normalize`), the
            statistics to undo first; ``None`` for raw parameters.
    Returns:
        ``(B, H, W)`` for one output channel, ``(B, H, W, C)`` otherwise.
    """
    params = unflatten(flat_params, spec)
    if stats is not None:
        params = invert_stats(params, spec, stats)
    coords = grid_on(height, width, flat_params.device, flat_params.dtype)  # on the device once
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

    def items(self, out: Tensor, y: Tensor) -> Tensor:
        """Per INR: its editing MSE ``(B,)`` (the test metric is their mean)."""
        return editing_loss(out, self.spec, y, self.omega0, self.offset, self.stats)


# --------------------------------------------------------------------------------------------
# The editing runs (stage ``edit``): data with dilated targets, and one (editor, seed) job
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
N_EXAMPLES = 6  # test INRs rendered before / after editing for the report's figure (spread over the split)


def with_targets(graphs: GraphSet, image_of_net: dict[int, int], images: torch.Tensor) -> GraphSet:
    """The graph set with ``y`` replaced by each INR's dilated image ``(G, H, W)``."""
    idx = torch.tensor([image_of_net[int(n)] for n in graphs.net_id])
    return dataclasses.replace(graphs, y=dilate(images[idx]))


def subset(graphs: GraphSet, n: int, template, seed: int) -> GraphSet:
    """``n`` graphs drawn at random with ``seed`` (all for ``n == 0`` or ``n >= len``).

    Random, not the first ``n``: the zoo's splits are sorted by image index, and the offline
    MNIST digits are sorted by label, so the first 1 000 training INRs are only 0s, 1s and 2s.
    """
    if n == 0 or n >= len(graphs):
        return graphs
    idx = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    params = {k: v[idx] for k, v in graphs.to_params(template).items()}
    return GraphSet.from_params(params, template, graphs.y[idx], graphs.net_id[idx])


def load_edit_data(graphs_dir: Path, zoo_dir: Path, n_train: int) -> GraphData:
    """The graphs with every INR's dilated image as target, ``n_train`` training INRs drawn once
    (the same for every seed): what each editing task receives through the object store."""
    data = GraphData.load(graphs_dir)
    template = graph_template(ParamSpec.from_dict(data.meta["spec"]))
    images, _ = load_images(read_json(zoo_dir / "zoo.json")["recipe"]["source"])
    image_of_net = {r.net_id: r.image_index for r in read_manifest(zoo_dir / "manifest.csv")}
    splits = {s: with_targets(g, image_of_net, images) for s, g in data.splits.items()}
    splits["train"] = subset(splits["train"], n_train, template, seed=0)
    zoo = {"manifest": (zoo_dir / "manifest.csv").read_text(), "zoo": read_json(zoo_dir / "zoo.json")}
    return GraphData(data.meta, splits, {"targets": "dilation", "n_train": n_train, "zoo": fingerprint(zoo)})


def editing_objective(data: GraphData) -> Editing:
    """The editing objective of the SIREN graphs' ``meta.json`` (their spec, forward and statistics)."""
    meta = data.meta
    fwd = meta["forward"]
    stats = {k: tuple(v) for k, v in meta["norm_stats"].items()}
    return Editing(ParamSpec.from_dict(meta["spec"]), float(fwd["omega0"]), float(fwd["output_offset"]), stats)


def editing_extras(fitting: Fitting) -> Extras:
    """The unedited test INRs' scores (``reference``), and :data:`N_EXAMPLES` test INRs rendered
    as originals, targets and, at the best validation epoch, edited (``examples``)."""
    objective, spec, device = fitting.objective, fitting.template.spec, fitting.device
    test = fitting.data.splits["test"]
    test_flat = flatten(test.to_params(fitting.template), spec)
    reference = objective.metrics(test_flat, test.y)  # the unedited INRs against the dilated images
    examples: dict[str, list] = {}
    shown = torch.linspace(0, len(test) - 1, N_EXAMPLES).round().long()  # splits are sorted by digit: spread out

    def render(flat: torch.Tensor) -> list:
        rendered = render_sirens(flat.cpu(), spec, objective.omega0, objective.offset, stats=objective.stats)
        return rendered.round(decimals=4).tolist()

    def on_best(m: nn.Module) -> None:
        with torch.no_grad():
            examples["edited"] = render(m(fitting.inputs["test"].batch(shown).to(device)))  # 6 examples moved

    def finish(res: RunResult) -> dict:
        examples["original"] = render(test_flat[shown])
        examples["target"] = test.y[shown].round(decimals=4).tolist()
        n_train = len(fitting.data.splits["train"])
        return {"reference": reference, "examples": examples, "n_train": n_train, "n_test": len(test)}

    return Extras(state=examples, on_best=on_best, finish=finish)


def _one_image(objective: Editing) -> int:
    """One rendered image per INR (the editor's output is parameters; this sizes no head)."""
    return 1


EDITING = JobKind(objective=editing_objective, n_out=_one_image, editor=True, extras=editing_extras, label="edit ")


def _edit_data(section: Any, paths: dict[str, Path]) -> GraphData:
    return load_edit_data(paths["graphs"], paths["zoo"], section.n_train)


TASKS = {
    "edit": Task(
        kind=EDITING,
        section="edit",
        paths={"graphs": "data/graphs", "zoo": "data/zoo", "out": "data/edit"},
        load=_edit_data,
        extra=("init_scale",),
    )
}
