"""DVC stage of every zoo family (:mod:`pipeline.zoo.registry`): plan the zoo from the params,
fit its missing shards as Ray tasks (resumable: a shard file that carries its fingerprint is
kept), write ``manifest.csv`` and ``zoo.json``, tracked in MLflow.

    python -m stages.zoo                       # SIREN INRs of the digits -> data/zoo
    python -m stages.zoo kan_zoo@inr           # KAN-INRs (also @classifier) -> data/kan/inr/zoo
    python -m stages.zoo cnn_zoo@homogeneous   # CNN classifiers (also @heterogeneous)
    python -m stages.zoo adapt_zoo             # digit-pair classifiers, domain adaptation

``--out`` (default above) picks the zoo's folder, ``--params`` the params file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import ConfigError, Params
from pipeline.distributed import task_device
from pipeline.provenance import fit_environment
from pipeline.zoo import registry
from pipeline.zoo.family import ZooFamily, ZooPlan
from stages.common import parse, reported_errors
from stages.zoo_driver import run_zoo


def plan_zoo(params: Params, stage: str = "zoo", out: Path | None = None) -> ZooPlan:
    """The plan of zoo stage ``stage`` that ``params`` define (its shards, their data and
    fingerprints); ``out``: the zoo's folder (default: the family's)."""
    family, variant = _family(stage)
    out = Path(family.default_out(variant)) if out is None else out
    environment = fit_environment(*registry.stage_modules(stage))
    sections = [getattr(params, name) for name in family.sections]
    device = task_device(params.ray)
    return family.plan(*sections, variant=variant, seed=params.seed, out=out, device=device, environment=environment)


def _family(stage: str) -> tuple[ZooFamily, str]:
    """The family and variant of ``stage``; :class:`ConfigError` naming the choices otherwise."""
    try:
        family = registry.family(stage)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    variant = stage.partition("@")[2]
    if variant not in (family.variants or ("",)):
        raise ConfigError(f"{stage}: unknown variant {variant!r}; choose from {', '.join(family.variants) or 'none'}")
    return family, variant


def run(params: Params, stage: str, out: Path) -> dict:
    """Plan, fit the missing shards, write ``manifest.csv`` and ``zoo.json``; return a summary."""
    return run_zoo(params, plan_zoo(params, stage, out), registry.family(stage).record, out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    stage, argv = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("zoo", argv)
    try:
        family, variant = _family(stage)
    except ConfigError as e:
        raise SystemExit(f"usage: python -m stages.zoo [<zoo stage>[@<variant>]] [options]; {e}") from None
    params, args = parse(__doc__, {"out": family.default_out(variant)}, argv)
    with reported_errors(stage, Path(args.out)):
        run(params, stage, Path(args.out))


if __name__ == "__main__":
    main()
