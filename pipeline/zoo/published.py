"""Readers for the published INR weight-space data sets, into metazoo's zoo format.

Layouts (``../shared/reference/formats.md``; the files need a download, never done here):

* **DWSNets MNIST / F-MNIST INRs**: one PyTorch state dict per INR (``seq.0.weight``,
  ``seq.0.bias``, ... ``seq.2.bias``: SIREN 2 -> 32 -> 32 -> 1, ``omega0 = 30``, output + 0.5),
  under ``mnist_png_{training,testing}_<label>_<idx>/checkpoints/model_final.pth``; F-MNIST
  files carry a ``label`` entry; a ``splits.json`` lists the paths (and labels) of each split.
* **NFN SIREN INRs**: state dicts ``net<idx>.pth`` in one folder per label, named like
  ``randinit_smaller[_augK]_<label>s`` (standard SIREN, no output offset).

Every file is read with ``torch.load(weights_only=True)``: a pickle from a stranger never runs
code; a file that is not a plain state dict raises :class:`~pipeline.io.CorruptFileError`
naming it. :func:`write_imported_zoo` stores the nets exactly as the ``zoo`` stage does (safetensors
shards, manifest with per-net hashes, ``zoo.json``), so the ``graphs`` stage reads them with
``--zoo <dir>`` and nothing downstream knows the difference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pipeline.io import CorruptFileError, read_json, staged_dir, write_json
from pipeline.weightspace.spec import Params, ParamSpec
from pipeline.zoo.siren import siren_spec
from pipeline.zoo.store import NetRecord, net_hashes, shard_name, write_manifest, write_shard

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
DWSNETS_DIR = re.compile(r"_(training|testing)_(\d+)_(\d+)$")
NFN_DIR = re.compile(r"_(\d+)s?$")
N_CLASSES = 10  # every published INR set here is of a 10-class image data set (MNIST, F-MNIST, CIFAR-10)


@dataclass(frozen=True)
class InrFile:
    """One published INR: its state-dict file, digit label and split."""

    path: Path
    label: int
    split: str


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict of tensors (``weights_only=True``: no code from the file ever runs).

    Accepts a bare state dict or one nested under ``state_dict`` / ``model``; non-tensor entries
    (a ``label`` int, say) are kept as they are. Raises :class:`CorruptFileError` naming the file.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated file, not a torch file
        raise CorruptFileError(f"{path}: not a plain PyTorch state dict ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = {**obj[key], **{k: v for k, v in obj.items() if k != key}}
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CorruptFileError(f"{path}: holds no tensors")
    return obj


def _layer_key(name: str) -> tuple:
    """Natural sort key of a parameter name: ``seq.10.weight`` after ``seq.2.weight``."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def mlp_params(state: dict[str, Tensor], path: str | Path = "<state dict>") -> tuple[tuple[int, ...], Params]:
    """``(layer sizes, one net's params in mlp_spec naming)`` from a state dict of linear layers.

    The 2-D ``*.weight`` tensors, in natural order of their names, are the layers; each needs a
    ``*.bias`` of matching length and consecutive layers must chain.
    """
    weights = sorted(
        (k for k, v in state.items() if k.endswith("weight") and getattr(v, "dim", lambda: 0)() == 2), key=_layer_key
    )
    if not weights:
        raise CorruptFileError(f"{path}: no 2-D '*.weight' tensors")
    sizes = [int(state[weights[0]].shape[1])]
    params: Params = {}
    for l, wk in enumerate(weights):
        w = state[wk].float()
        bk = wk[: -len("weight")] + "bias"
        b = state.get(bk)
        if b is None or b.shape != (w.shape[0],):
            raise CorruptFileError(f"{path}: {wk} {tuple(w.shape)} has no matching {bk}")
        if w.shape[1] != sizes[-1]:
            raise CorruptFileError(f"{path}: {wk} takes {w.shape[1]} inputs, the layer before gives {sizes[-1]}")
        sizes.append(int(w.shape[0]))
        params[f"layers.{l}.weight"], params[f"layers.{l}.bias"] = w, b.float()
    return tuple(sizes), params


def dwsnets_files(root: str | Path) -> list[InrFile]:
    """The INRs of a DWSNets data set directory, with labels and splits.

    With ``splits.json`` (``{split: {"path": [...], "label": [...]}}``, paths absolute or
    relative to ``root``, and inside ``root`` once resolved) that file decides; without it,
    ``*_training_*`` files are the training split and ``*_testing_*`` the test split (no
    validation split), labels from folder names.
    """
    root = Path(root)
    splits = root / "splits.json"
    if splits.exists():
        try:
            spec = json.loads(splits.read_text())
        except (OSError, ValueError) as e:
            raise CorruptFileError(f"{splits}: {e}") from e
        files = []
        for name, entry in spec.items():
            if name not in SPLIT_NAMES:
                raise CorruptFileError(f"{splits}: unknown split {name!r}; expected one of {sorted(SPLIT_NAMES)}")
            try:
                listed = [(p, entry["label"][i] if "label" in entry else None) for i, p in enumerate(entry["path"])]
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise CorruptFileError(f"{splits}: malformed entry for split {name!r} ({type(e).__name__}: {e})") from e
            for p, label in listed:
                label = _dwsnets_label(Path(p)) if label is None else label
                files.append(InrFile(_resolve(root, p), label, SPLIT_NAMES[name]))
        return files
    files = []
    for path in sorted(root.rglob("model_final.pth")):
        _check_inside(root, path)
        m = DWSNETS_DIR.search(path.parent.parent.name)
        if m is None:
            raise CorruptFileError(f"{path}: folder name does not match *_(training|testing)_<label>_<idx>")
        files.append(InrFile(path, int(m.group(2)), "train" if m.group(1) == "training" else "test"))
    return files


def _dwsnets_label(path: Path) -> int:
    for part in reversed(path.parts):
        m = DWSNETS_DIR.search(part)
        if m:
            return int(m.group(2))
    raise CorruptFileError(f"{path}: no label in splits.json or in the folder name")


def _check_inside(root: Path, path: Path) -> None:
    """Refuse a file found under ``root`` that resolves elsewhere (a symbolic link out of it)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise CorruptFileError(f"{path}: resolves to {path.resolve()}, outside the source directory {root}")


def check_listing(files: list[InrFile]) -> None:
    """Refuse a listing that names one file twice (in one split, or in two: test leakage)."""
    seen: dict[Path, str] = {}
    for f in files:
        key = f.path.resolve()
        if key in seen:
            where = f"in {f.split} and {seen[key]}" if seen[key] != f.split else f"twice in {f.split}"
            raise CorruptFileError(f"{f.path}: listed {where} (one INR may be in one split only)")
        seen[key] = f.split


def _resolve(root: Path, p: str) -> Path:
    """The file a ``splits.json`` entry names, which must lie inside ``root`` once resolved
    (``..`` and symbolic links followed): a listing never makes us read a file elsewhere."""
    q = Path(p)
    candidates = [q if q.is_absolute() else root / q]
    # splits.json written on another machine: keep the part from the INR's own folder on
    candidates += [root / Path(*q.parts[i:]) for i, part in enumerate(q.parts) if DWSNETS_DIR.search(part)]
    inside = root.resolve()
    outside = None
    for c in candidates:
        if c.exists():
            if c.resolve().is_relative_to(inside):
                return c
            outside = outside or c
    if outside is not None:
        raise CorruptFileError(
            f"{root / 'splits.json'}: listed file {p} resolves to {outside.resolve()}, "
            f"outside the source directory {root}"
        )
    raise CorruptFileError(f"{root / 'splits.json'}: listed file {p} not found under {root}")


def nfn_files(root: str | Path, split: str = "train") -> list[InrFile]:
    """``net<idx>.pth`` files under one folder per label (``..._<label>s``), all in ``split``."""
    root = Path(root)
    files = []
    for path in sorted(root.rglob("net*.pth"), key=lambda p: (str(p.parent), _layer_key(p.stem))):
        _check_inside(root, path)
        m = NFN_DIR.search(path.parent.name)
        if m is None:
            raise CorruptFileError(f"{path}: folder name does not end in _<label>s")
        files.append(InrFile(path, int(m.group(1)), split))
    return files


def read_inrs(files: list[InrFile]) -> tuple[ParamSpec, Params, list[int]]:
    """``(spec, zoo batch, labels)`` of every file's SIREN (all must share one layout).

    A ``label`` entry inside a file (F-MNIST) wins over the listing's label. A net with a
    non-finite parameter or a label outside ``0 .. N_CLASSES - 1`` raises
    :class:`CorruptFileError` naming its file.
    """
    nets, labels, sizes = [], [], None
    for f in files:
        state = read_state_dict(f.path)
        labels.append(_checked_label(f, state.get("label")))
        s, p = mlp_params({k: v for k, v in state.items() if isinstance(v, Tensor) and k != "label"}, f.path)
        for name, t in p.items():
            if not torch.isfinite(t).all():
                raise CorruptFileError(f"{f.path}: {name} holds non-finite values (NaN or inf)")
        if sizes is None:
            sizes = s
        elif s != sizes:
            raise CorruptFileError(f"{f.path}: layout {s} differs from the first file's {sizes}")
        nets.append(p)
    if not nets:
        raise CorruptFileError("no INR files found")
    spec = siren_spec(sizes[1:-1], sizes[0], sizes[-1])
    return spec, {t.name: torch.stack([n[t.name] for n in nets]) for t in spec.tensors}, labels


def _checked_label(f: InrFile, entry) -> int:
    """The label of ``f``: its file's ``label`` entry if it has one, else the listing's."""
    source = f"its 'label' entry {entry!r}" if entry is not None else f"label {f.label!r} from the listing"
    try:
        value = float(entry if entry is not None else f.label)
        label = int(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CorruptFileError(f"{f.path}: {source} is not an integer class") from e
    if value != label:
        raise CorruptFileError(f"{f.path}: {source} is not an integer class")
    if not 0 <= label < N_CLASSES:
        raise CorruptFileError(f"{f.path}: {source} is outside the classes 0..{N_CLASSES - 1}")
    return label


def carve_validation(files: list[InrFile], fraction: float, seed: int = 0) -> list[InrFile]:
    """Move a seeded ``fraction`` of the training files to ``val`` if there is no validation split."""
    if any(f.split == "val" for f in files) or fraction <= 0:
        return files
    train = [i for i, f in enumerate(files) if f.split == "train"]
    g = torch.Generator().manual_seed(seed)
    picked = {train[int(j)] for j in torch.randperm(len(train), generator=g)[: round(fraction * len(train))]}
    return [InrFile(f.path, f.label, "val") if i in picked else f for i, f in enumerate(files)]


def write_imported_zoo(
    out: str | Path,
    files: list[InrFile],
    spec: ParamSpec,
    params: Params,
    labels: list[int],
    recipe: dict,
    image_shape: tuple[int, int] = (28, 28),
    shard_size: int = 1000,
) -> dict:
    """Store imported nets in the ``zoo`` stage's format (atomic shards, manifest, ``zoo.json``),
    written as one generation (:func:`pipeline.io.staged_dir`): an earlier import in ``out`` is
    replaced whole, never mixed with the new one. A non-empty ``out`` that is not an earlier import
    (a fitted zoo, any other folder) is refused, naming it: nothing there is overwritten."""
    final = Path(out)
    check_replaceable(final)
    with staged_dir(final) as tmp:
        return _write_imported_zoo(tmp, files, spec, params, labels, recipe, image_shape, shard_size)


def check_replaceable(out: Path) -> None:
    """Refuse (naming it) a non-empty ``out`` that is not an earlier import: an import replaces
    only its own kind of folder, never a fitted zoo or anything else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        earlier = read_json(out / "zoo.json").get("recipe", {}).get("format")
    except (CorruptFileError, AttributeError):
        earlier = None
    if not earlier:
        raise CorruptFileError(
            f"{out}: not empty and not an earlier import (no zoo.json recipe.format); choose another --out"
        )


def _write_imported_zoo(
    out: Path,
    files: list[InrFile],
    spec: ParamSpec,
    params: Params,
    labels: list[int],
    recipe: dict,
    image_shape: tuple[int, int],
    shard_size: int,
) -> dict:
    n = len(files)
    hashes = net_hashes(params, spec)
    records, fp = [], f"import:{recipe.get('format', '?')}"
    for k, start in enumerate(range(0, n, shard_size)):
        idx = torch.arange(start, min(start + shard_size, n))
        name = shard_name(k)
        write_shard(out / "shards" / name, {t: v[idx] for t, v in params.items()}, spec, {"net_id": idx}, fp)
        for i in idx.tolist():
            records.append(
                NetRecord(i, -1, labels[i], files[i].split, -1, float("nan"), float("nan"), 0, False, name, hashes[i])
            )
    write_manifest(out / "manifest.csv", records)
    counts = {s: sum(f.split == s for f in files) for s in ("train", "val", "test")}
    summary = {"n_nets": n, "n_diverged": 0, "counts": counts}
    write_json(
        out / "zoo.json",
        {"spec": spec.to_dict(), "recipe": recipe, "image_shape": list(image_shape), "summary": summary},
    )
    return summary


INR_FORMATS = {
    # format: (file lister, SIREN omega0, output-offset variant)
    "dwsnets": (dwsnets_files, 30.0, "dwsnets"),
    "nfn": (nfn_files, 30.0, "standard"),
}


def import_inr_zoo(fmt: str, src: Path, out: Path, val_fraction: float, seed: int, omega0: float | None = None) -> dict:
    """A published INR data set (:data:`INR_FORMATS`) in ``src`` stored as a SIREN zoo in ``out``
    (:func:`write_imported_zoo`), ``val_fraction`` of its training INRs carved out for
    validation when it has no validation split. Returns the zoo's summary."""
    lister, default_omega, variant = INR_FORMATS[fmt]
    listed = lister(src)
    check_listing(listed)
    files = carve_validation(listed, val_fraction, seed)
    spec, params, labels = read_inrs(files)
    recipe = {
        "format": fmt,
        "source": str(src),
        "fit": {"omega0": omega0 or default_omega, "variant": variant},
        "val_fraction": val_fraction,
        "seed": seed,
    }
    summary = write_imported_zoo(out, files, spec, params, labels, recipe)
    return summary | {"what": f"{fmt} INRs {list(spec.layer_sizes)}"}
