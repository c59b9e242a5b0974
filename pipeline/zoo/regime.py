"""A SIREN zoo's regime: how far its fitted weights are from their initial values, tensor by tensor.

A weight-space model can only read what fitting wrote into the weights. Where a tensor barely
leaves its random initialization, its values describe the seed, not the image; the nets of
such a zoo differ mostly by a random per-net basis, and weight-only models stay near the level
of per-tensor statistics. :func:`zoo_regime` measures this for a stored zoo: the initial values
are drawn again from each net's seed (:func:`pipeline.zoo.siren.init_sirens`), so nothing
beyond the zoo itself is needed.

Per tensor ``t`` with fitted values ``theta_t`` and initial values ``theta0_t`` of one net:

* ``moved``: median over nets of ``||theta_t - theta0_t|| / ||theta_t||``: 0 when fitting left
  the tensor as initialized, about 1 when the initial values no longer matter (a tensor
  initialized at zero moves by exactly 1);
* ``std`` / ``init_std``: standard deviation of the fitted / initial values over every entry of
  every net (the per-layer statistics papers report for their zoos).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.weightspace.spec import Params, ParamSpec, unflatten
from pipeline.zoo.siren import init_sirens
from pipeline.zoo.store import Zoo


def tensor_movement(fitted: Params, initial: Params) -> dict[str, dict[str, float]]:
    """``moved``, ``std`` and ``init_std`` of every tensor (module docstring).

    Args:
        fitted, initial: the same tensors, ``(B, ...)`` each, net ``b`` in row ``b``.
    Returns:
        ``{tensor name: {"moved", "std", "init_std"}}`` in the order of ``fitted``.
    """
    out = {}
    for name, theta in fitted.items():
        theta0 = initial[name]
        if theta.shape != theta0.shape:
            raise ValueError(f"{name}: fitted {tuple(theta.shape)} vs initial {tuple(theta0.shape)}")
        diff = (theta - theta0).flatten(1).norm(dim=1)
        norm = theta.flatten(1).norm(dim=1).clamp_min(torch.finfo(theta.dtype).tiny)
        out[name] = {
            "moved": float((diff / norm).median()),
            "std": float(theta.std()),
            "init_std": float(theta0.std()),
        }
    return out


def initial_params(zoo: Zoo, seeds: list[int]) -> Params:
    """The initial values of the nets with ``seeds``, drawn as the zoo's fit drew them."""
    fit = zoo.info["recipe"]["fit"]
    return unflatten(init_sirens(zoo.spec, seeds, fit["omega0"], fit["variant"]), zoo.spec)


def zoo_regime(zoo: Zoo, split: str | None = None) -> dict:
    """Regime of a SIREN zoo's non-diverged nets (of ``split``, or every split).

    Returns ``{"n", "diverged", "psnr_median", "psnr_p10", "tensors": tensor_movement(...)}``;
    ``diverged`` counts the nets left out (NaN or below the zoo's PSNR floor).
    """
    if "variant" not in zoo.info.get("recipe", {}).get("fit", {}):
        raise ValueError("zoo_regime needs a SIREN zoo fitted by this project (its recipe names the init)")
    rows = [i for i, r in enumerate(zoo.records) if split is None or r.split == split]
    keep = [i for i in rows if not zoo.records[i].diverged]
    if not keep:
        raise ValueError(f"no fitted net in split {split!r}")
    idx = torch.tensor(keep, dtype=torch.long)
    fitted = {k: v[idx] for k, v in zoo.params.items()}
    initial = initial_params(zoo, [zoo.records[i].seed for i in keep])
    psnr: Tensor = torch.tensor([zoo.records[i].psnr for i in keep])
    return {
        "n": len(keep),
        "diverged": len(rows) - len(keep),
        "psnr_median": float(psnr.median()),
        "psnr_p10": float(psnr.quantile(0.1)),
        "tensors": tensor_movement(fitted, initial),
    }


def layer_names(spec: ParamSpec) -> dict[str, str]:
    """Short labels of the tensors (``W0``, ``b0``, ``W1``, ...) for tables."""
    return {t.name: ("W" if t.role == "edge" else "b") + t.name.split(".")[1] for t in spec.tensors}
