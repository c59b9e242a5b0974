"""The zoo families, by stage name, and the modules each one runs.

Every zoo stage runs through one entry point, ``python -m stages.zoo <stage>[@<variant>]``
(``stages/zoo.py``), which imports the family's module by name (:func:`family`). A zoo's code
hash and its DVC stage therefore depend on exactly :func:`stage_modules`: the entry point and its
family's module, each with everything it imports (:func:`pipeline.provenance.source_files`),
and not on the other families. This module imports nothing of the project, so adding a family
adds one line to :data:`FAMILY_MODULES` and a ``FAMILY`` (:class:`~pipeline.zoo.family.ZooFamily`)
to its module.
"""

from __future__ import annotations

import importlib
from typing import Any

ENTRY = "stages.zoo"
FAMILY_MODULES = {
    "zoo": "pipeline.zoo.build",  # SIREN INRs of the offline MNIST digits
    "kan_zoo": "pipeline.zoo.kan_zoo",  # KANs (@inr: KAN-INRs, @classifier: digit classifiers)
    "cnn_zoo": "pipeline.zoo.cnn_zoo",  # CNN classifiers (@homogeneous, @heterogeneous)
    "adapt_zoo": "pipeline.zoo.adapt_zoo",  # digit-pair MLPs and their corrupted domain
}


def stage_modules(stage: str) -> tuple[str, ...]:
    """The modules zoo stage ``stage`` (``"kan_zoo@inr"``) runs: ``stages.zoo`` and its family's."""
    return (ENTRY, FAMILY_MODULES[stage.split("@")[0]])


def family(stage: str) -> Any:
    """The :class:`~pipeline.zoo.family.ZooFamily` of zoo stage ``stage``; ``KeyError`` naming the
    known stages for another name."""
    name = stage.split("@")[0]
    if name not in FAMILY_MODULES:
        raise KeyError(f"unknown zoo stage {name!r}; zoo stages: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY
