"""What a result was made with: the project source files a module runs, and the machine.

:func:`source_files` follows a module's imports through the project (``pipeline``, ``stages``)
at any depth (imports inside functions too); a package that loads its modules by name
(``pkgutil.iter_modules``) brings all of them, and a data file a module names (its
``csrc/kan_spline.cpp``) comes with the module. ``pipeline/config.py`` is followed through its
top-level imports only: its check functions import registries (model ``Settings``, allowed
names) to validate ``params.yaml``, which does not make any result.

Zoo shard fingerprints carry :func:`fit_environment` (the fitting code's hash, the torch
version, the CPU and its kernel capability), so a shard fitted by other code or on another
machine kind is refitted, never mixed in; ``tests/test_dvc_deps.py`` checks ``dvc.yaml``
against :func:`source_files`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
VALIDATION_ONLY = ROOT / "pipeline" / "config.py"


def module_file(name: str) -> Path | None:
    """``pipeline.zoo.kan`` -> ``<root>/pipeline/zoo/kan.py`` (a package: its ``__init__.py``);
    ``None`` outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _direct(path: Path) -> set[Path]:
    """Project files ``path`` imports, the ``__init__`` of every package on the way, and the
    data files under its folder that it names."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if path == VALIDATION_ONLY else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # submodules imported by name
    for name in list(names):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        parts = name.split(".")
        names.update(".".join(parts[:k]) for k in range(1, len(parts)))
    out = {f for f in map(module_file, names) if f is not None}
    if any(_loads_package_by_name(n) for n in ast.walk(tree)):
        out.update(path.parent.glob("*.py"))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for data in path.parent.rglob("*"):
        if data.is_file() and data.suffix not in (".py", ".pyc") and data.name in strings:
            out.add(data)
    return out - {path}


def _loads_package_by_name(node: ast.AST) -> bool:
    """``pkgutil.iter_modules(__path__)``: a registry that imports its package's modules by name."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "iter_modules"
        and any(isinstance(a, ast.Name) and a.id == "__path__" for a in node.args)
    )


@functools.cache
def source_files(module: str) -> tuple[Path, ...]:
    """Every project file that running ``module`` (``"stages.zoo"``) can execute, sorted."""
    entry = module_file(module)
    if entry is None:
        raise ValueError(f"{module!r} is not a module of {PACKAGES}")
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            if f.suffix == ".py":
                todo.extend(_direct(f))
    return tuple(sorted(seen))


def code_hash(module: str) -> str:
    """Short SHA-256 over the paths and bytes of :func:`source_files` of ``module``."""
    h = hashlib.sha256()
    for path in source_files(module):
        h.update(f"{path.relative_to(ROOT).as_posix()}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def cpu_tag() -> str:
    """Short hash of this CPU's model and instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = [platform.machine(), platform.processor()]
    ident = [line for line in lines if line.startswith(("model name", "flags"))][:2] or lines
    return hashlib.sha1("\n".join(ident).encode()).hexdigest()[:10]


def fit_environment(*modules: str) -> dict[str, str]:
    """What a zoo shard's bytes depend on besides its recipe and inputs: the code of ``modules``
    (the zoo stage's entry point and family module, :func:`pipeline.zoo.registry.stage_modules`:
    their whole import closures, as their DVC deps), the torch version, the CPU and the vector
    instructions torch's kernels use."""
    import torch

    return {
        "code": "+".join(code_hash(m) for m in modules),
        "torch": torch.__version__,
        "cpu": cpu_tag(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def recipe_environment(recipe: dict) -> dict[str, str]:
    """The part of a zoo recipe's ``environment`` (and KAN ``backend``) a worker must match for
    the shard's bytes to be what its fingerprint says, keyed as :func:`worker_environment`: on CPU
    the torch version, CPU tag and kernel capability (and the KAN spline backend); on a GPU the
    torch version (the GPU's name and CUDA version are recorded, not yet fingerprinted)."""
    env = recipe["environment"]
    backend = recipe.get("backend", "")
    on_cpu = recipe.get("device", "cpu") == "cpu" and not backend.startswith("torch-")
    out = {"torch": env["torch"]}
    if on_cpu:
        out |= {"cpu": env["cpu"], "cpu_capability": env["cpu_capability"]}
        if backend:
            out["kan_backend"] = backend
    return out


@functools.cache
def project_hash() -> str:
    """Short SHA-256 over every file of the project packages (``pipeline``, ``stages``: sources
    and data files such as the KAN kernel's C++) as this process finds them on its disk.

    A Ray task returns it with its result (:func:`worker_environment`), so the driver can refuse
    a result made by other code: a node that imported an older checkout, or another install.
    Cached: a process hashes the code it imported once.
    """
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(f"{path.relative_to(ROOT).as_posix()}\n".encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def worker_environment() -> dict[str, str]:
    """Where and with what this process computes: the project code it imported
    (:func:`project_hash`), its host, CPU tag and kernel capability, torch and CUDA versions, the
    GPU it sees (``""`` without one) and, once it has fitted KANs, the spline backend it used
    (``kan_backend``). Computed inside the task that makes the bytes."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    env = {
        "code": project_hash(),
        "host": socket.gethostname(),
        "cpu": cpu_tag(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cuda": (torch.version.cuda or "") if gpu else "",
        "gpu": gpu,
    }
    kan = sys.modules.get("pipeline.zoo.kan")
    if kan is not None and kan.spline_kernel.cache_info().currsize:  # this process fitted KANs: with what
        env["kan_backend"] = kan.kan_backend()
    return env
