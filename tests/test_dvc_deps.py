"""``dvc.yaml`` declares every file and parameter each stage's code reads.

Each stage's project files are derived from the code (:func:`pipeline.provenance.source_files`
of its entry point ``python -m stages.<name>``: imports followed at any depth, registries and
named data files included). A declared dependency covers a file when it is that file or a
folder above it. So a change to any code a stage runs makes ``dvc repro`` rerun that stage,
and this test keeps that true as the code grows.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.provenance import ROOT, module_file, source_files
from pipeline.tasks import registry
from pipeline.zoo import registry as zoos
from tests.conftest import stage_modules

# Where tasks run and where results are logged do not change results: ray.address,
# ray.num_cpus, ray.max_retries and the mlflow section. ray.device and ray.gpus_per_task do
# (GPU bytes differ from CPU bytes) and are declared by the stages that read them.
NOT_RESULT_PARAMS = ("ray", "mlflow")


def stage_commands() -> dict[str, tuple[str, list[str], list[str], list[str]]]:
    """``{stage: (entry module, deps, params, params of the other foreach items)}``, ``foreach``
    stages expanded per item."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        items = stage.get("foreach", [None])
        body = stage.get("do", stage)
        for item in items:

            def sub(s: str, item: str | None = item) -> str:
                return s.replace("${item}", item) if item else s

            key = f"{name}@{item}" if item else name
            module = re.search(r"python -m (\S+)", body["cmd"]).group(1)
            others = [p.replace("${item}", o) for o in items if o not in (None, item) for p in body.get("params", [])]
            deps, declared = [sub(d) for d in body.get("deps", [])], [sub(p) for p in body.get("params", [])]
            out[key] = (module, deps, declared, [p for p in others if p not in declared])
    return out


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


STAGES = stage_commands()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_declares_every_module_it_runs(stage):
    """Every file of the modules the stage's runs are fingerprinted with (the entry point, and a
    fitting task's module, which ``stages.fit`` imports by name)."""
    module, deps, _, _ = STAGES[stage]
    modules = stage_modules(stage)
    assert modules[0] == module, f"dvc.yaml runs {module} for {stage!r}; its runs say {modules[0]}"
    files = set().union(*(source_files(m) for m in modules))
    missing = sorted(str(f.relative_to(ROOT)) for f in files if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs these files but does not list them in deps: {missing}"


def params_read(path: Path) -> set[str]:
    """Dotted ``params.<section>.<key>`` chains read in ``path`` (``params`` = the loaded Params)."""
    from pipeline.config import Params

    sections = {f.name for f in dataclasses.fields(Params)}
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            parts, n = [], node
            while isinstance(n, ast.Attribute):
                parts.append(n.attr)
                n = n.value
            if isinstance(n, ast.Name) and n.id == "params" and parts[-1] in sections:
                chains.add(".".join(reversed(parts[-2:])))  # the section and its key
    return chains


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_declares_every_param_it_reads(stage):
    """The entry point reads ``Params`` and hands sections on (the library never sees ``Params``)."""
    module, _, declared, others = STAGES[stage]
    chains = params_read(module_file(module))
    if module == registry.ENTRY:  # a fitting task: its settings section
        chains.add(registry.task(stage).section)
    if module == zoos.ENTRY:  # a zoo stage: its family's sections
        chains.update(zoos.family(stage).sections)
    missing = set()
    for chain in chains:
        if chain.split(".")[0] in NOT_RESULT_PARAMS and chain not in ("ray.device", "ray.gpus_per_task"):
            continue
        if chain in others:  # ``kan.classifier`` read by kan_zoo@inr's code path for the other item
            continue
        # a whole section handed on (``params.kan``) needs some key of it declared
        if not any(chain == d or chain.startswith(d + ".") or d.startswith(chain + ".") for d in declared):
            missing.add(chain)
    assert not missing, f"dvc.yaml stage {stage!r} reads these params but does not declare them: {sorted(missing)}"


def test_the_derivation_finds_what_it_must():
    """The checker sees imports inside functions, registry packages and data files."""
    deps = {str(f.relative_to(ROOT)) for f in source_files("stages.kan_forward")}
    assert "pipeline/tracking.py" in deps  # imported inside a function body
    assert "pipeline/models/ng_t.py" in deps  # loaded by name through the model registry
    assert "pipeline/zoo/csrc/kan_spline.cpp" in deps  # a C++ source the module compiles
    assert "pipeline/models/ng_t.py" not in {str(f.relative_to(ROOT)) for f in source_files("stages.zoo")}
    assert not covered(ROOT / "pipeline" / "zoo" / "kan.py", ["pipeline/zoo/kan_zoo.py", "pipeline/z"])


def _zoo_fingerprints(project: Path) -> list[str]:
    code = "from pipeline.config import load_params; from stages.zoo import plan_zoo; "
    code += "print(*plan_zoo(load_params()).fingerprints)"
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_change_to_the_fitting_code_refits_every_zoo_shard(project: Path):
    """A resume never mixes shards of other fitting code (``dvc status`` after a code change:
    ``tests/test_pipeline.py``'s end-to-end test)."""
    before = _zoo_fingerprints(project)
    for other in ("report/inr.py", "zoo/kan_zoo.py"):  # not its fitting code: a report, another family
        path = project / "pipeline" / other
        path.write_text(path.read_text() + "\n# not this zoo's fitting code\n")
        assert _zoo_fingerprints(project) == before, other
    siren = project / "pipeline" / "zoo" / "siren.py"
    siren.write_text(siren.read_text() + "\n# a change to the fitting code\n")
    after = _zoo_fingerprints(project)
    assert len(after) == len(before) and not set(after) & set(before)


def test_every_zoo_family_is_a_dvc_stage_with_its_variants_and_folder():
    """Each family of :mod:`pipeline.zoo.registry` is a ``dvc.yaml`` stage run by the one zoo entry
    point, one item per variant, writing its family's default folder; its sections are
    ``params.yaml`` sections."""
    import dataclasses

    from pipeline.config import Params

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    sections = {f.name for f in dataclasses.fields(Params)}
    for name in zoos.FAMILY_MODULES:
        family, body = zoos.family(name), spec[name].get("do", spec[name])
        assert set(family.sections) <= sections, name
        assert sorted(spec[name].get("foreach", [""])) == sorted(family.variants or [""]), name
        for variant in family.variants or ("",):
            stage = f"{name}@{variant}" if variant else name
            cmd, outs = (str(x).replace("${item}", variant) for x in (body["cmd"], body["outs"]))
            runs = f"python -m {zoos.ENTRY} {stage} " in cmd or (stage == "zoo" and f"python -m {zoos.ENTRY} --" in cmd)
            assert runs, cmd  # ``zoo`` is the entry point's default stage
            assert f"--out {family.default_out(variant)}" in cmd and family.default_out(variant) in outs, cmd
