"""Readers for published CNN zoos, into metazoo's CNN layout (:func:`~pipeline.zoo.cnn.cnn_spec`).

* **Small CNN Zoo** (Unterthiner et al. 2020; ``../shared/reference/formats.md``): ``weights.npy``
  (one row of 4 970 values per checkpoint for the MNIST architecture 1 -> 16 -> 16 -> 16 conv +
  dense 10), ``layout.csv`` (``varname, start_idx, end_idx, shape``: where each TensorFlow
  variable lies in a row), ``metrics.csv.gz`` (one row per checkpoint: hyper-parameters,
  ``test_accuracy``, ``step``, ...). Kernels are in TensorFlow order ``(h, w, in, out)`` and dense
  matrices ``(in, out)``; they become PyTorch's ``(out, in, h, w)`` and ``(out, in)``. The
  layout holds no strides: the zoo's convolutions have stride 2
  (:func:`~pipeline.zoo.cnn.small_cnn_zoo_arch`);
  the activation is read per checkpoint from the metrics (``config.activation``), ReLU if absent.
* **Wild-Park-style checkpoints**: one file per (run, step), ``<root>/<run>/<step>.pt``, holding
  ``state_dict`` (the conv weights and biases in order, then the linear head: any key names
  whose order is the layers' order), ``config`` (:meth:`~pipeline.zoo.cnn.CNNArch.to_dict`) and
  ``test_accuracy``.

:func:`write_imported_cnn_zoo` stores either in the ``cnn_zoo`` stage's format, so that
``python -m stages.cnn_graphs --zoo <it>`` and the CNN training stage read it like a zoo fitted here.

Every ``.pt`` file is read with ``torch.load(weights_only=True)`` (a pickle from a stranger never
runs code) and ``weights.npy`` with ``allow_pickle=False``; a missing or unreadable file, a layout
whose index ranges disagree with its shapes, or a test accuracy that is not a finite number in
[0, 1] raises :class:`~pipeline.io.CorruptFileError` naming the file (and the row).
"""

from __future__ import annotations

import ast
import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.io import CorruptFileError, staged_dir, write_json
from pipeline.weightspace.spec import Params, check_params
from pipeline.zoo.cnn import ACTIVATIONS, CNNArch, cnn_spec
from pipeline.zoo.published import check_replaceable
from pipeline.zoo.store import net_hashes, shard_name, write_rows, write_shard


@dataclass
class CNNCheckpoints:
    """Checkpoints of one architecture: the zoo batch and one metrics row per checkpoint
    (``run``, ``step``, ``test_accuracy`` and whatever else the source records)."""

    arch: CNNArch
    params: Params
    rows: list[dict[str, str]]


def _layout(path: Path) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """The variables of ``layout.csv`` in index order; each must span exactly its shape's values,
    one after the other from index 0."""
    try:
        with path.open(newline="") as f:
            rows = [
                (r["varname"], int(r["start_idx"]), int(r["end_idx"]), tuple(ast.literal_eval(r["shape"])))
                for r in csv.DictReader(f)
            ]
    except OSError as e:
        raise CorruptFileError(f"{path}: missing or unreadable ({e.strerror or e})") from e
    except (KeyError, ValueError, SyntaxError, TypeError, csv.Error) as e:
        raise CorruptFileError(f"{path}: not a Small CNN Zoo layout ({type(e).__name__}: {e})") from e
    rows = sorted(rows, key=lambda r: r[1])
    if not rows:
        raise CorruptFileError(f"{path}: no variables")
    at = 0
    for name, start, end, shape in rows:
        if start != at or end - start != int(np.prod(shape)) or any(n <= 0 for n in shape):
            raise CorruptFileError(
                f"{path}: {name} spans [{start}, {end}) but its shape {shape} holds {int(np.prod(shape))} values "
                f"from index {at}"
            )
        at = end
    return rows


def _finite_accuracy(value: object, where: str) -> float:
    try:
        acc = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise CorruptFileError(f"{where}: test_accuracy {value!r} is not a number") from e
    if not np.isfinite(acc) or not 0 <= acc <= 1:
        raise CorruptFileError(f"{where}: test_accuracy {acc} is not a finite accuracy in [0, 1]")
    return acc


def read_small_cnn_zoo(root: str | Path, step: int | None = 86) -> dict[str, CNNCheckpoints]:
    """The Small CNN Zoo in ``root`` (``weights.npy``, ``layout.csv``, ``metrics.csv.gz``), grouped
    by activation (one :class:`CNNCheckpoints` per architecture); ``step``: keep only that
    checkpoint of every run (the published final step, 86), ``None``: all of them."""
    root = Path(root)
    layout = _layout(root / "layout.csv")
    try:
        weights = np.load(root / "weights.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorruptFileError(f"{root / 'weights.npy'}: not a NumPy array file ({e})") from e
    try:
        with gzip.open(root / "metrics.csv.gz", "rt", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{root / 'metrics.csv.gz'}: not a gzip-compressed CSV file ({e})") from e
    if weights.ndim != 2 or len(rows) != weights.shape[0] or weights.shape[1] != layout[-1][2]:
        raise CorruptFileError(
            f"{root}: weights.npy {weights.shape} does not match {len(rows)} metrics rows and a layout "
            f"of {layout[-1][2]} values"
        )
    kernels = [r for r in layout if len(r[3]) == 4]
    dense = [r for r in layout if len(r[3]) == 2]
    biases = [r for r in layout if len(r[3]) == 1]
    if len(dense) != 1 or len(biases) != len(kernels) + 1:
        raise CorruptFileError(f"{root / 'layout.csv'}: expected conv kernels with biases and one dense layer")
    try:
        keep = [i for i, r in enumerate(rows) if step is None or int(float(r.get("step", step))) == step]
    except ValueError as e:
        raise CorruptFileError(f"{root / 'metrics.csv.gz'}: a step that is not a number ({e})") from e
    for i in keep:
        if "test_accuracy" in rows[i]:
            _finite_accuracy(rows[i]["test_accuracy"], f"{root / 'metrics.csv.gz'} row {i + 1}")
    w = torch.from_numpy(np.ascontiguousarray(weights[keep], dtype=np.float32))

    def take(entry) -> Tensor:
        _, start, end, shape = entry
        return w[:, start:end].reshape(len(keep), *shape)

    params: Params = {}
    for l, (kernel, bias) in enumerate(zip(kernels, biases, strict=False)):
        params[f"conv.{l}.weight"] = (
            take(kernel).permute(0, 4, 3, 1, 2).contiguous()
        )  # (h, w, in, out) -> (out, in, h, w)
        params[f"conv.{l}.bias"] = take(bias)
    params["head.weight"] = take(dense[0]).transpose(1, 2).contiguous()  # (in, out) -> (out, in)
    params["head.bias"] = take(biases[-1])
    convs = [params[f"conv.{l}.weight"].shape[1:] for l in range(len(kernels))]  # (out, in, h, w)
    out: dict[str, CNNCheckpoints] = {}
    for act in sorted({rows[i].get("config.activation", "relu") for i in keep}):
        if act not in ACTIVATIONS:
            raise CorruptFileError(f"{root / 'metrics.csv.gz'}: unknown activation {act!r}")
        sel = [k for k, i in enumerate(keep) if rows[i].get("config.activation", "relu") == act]
        channels, sizes = tuple(c[0] for c in convs), tuple(c[-1] for c in convs)
        arch = CNNArch(channels, sizes, (2,) * len(convs), act, (), convs[0][1], params["head.bias"].shape[1])
        batch = {k: v[sel] for k, v in params.items()}
        check_params(batch, cnn_spec(arch))
        out[arch.name] = CNNCheckpoints(arch, batch, [rows[keep[k]] for k in sel])
    return out


def read_wild_park(root: str | Path) -> dict[str, CNNCheckpoints]:
    """Wild-Park-style checkpoints under ``root`` (``<run>/<step>.pt``), grouped by architecture;
    each row holds ``run``, ``step`` and ``test_accuracy``."""
    root = Path(root)
    groups: dict[CNNArch, tuple[list[Params], list[dict[str, str]]]] = {}
    files = sorted(root.glob("*/*.pt"), key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else p.stem))
    if not files:
        raise CorruptFileError(f"{root}: no <run>/<step>.pt checkpoint files")
    for path in files:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            arch = CNNArch.from_dict(obj["config"])
            state, acc = obj["state_dict"], obj["test_accuracy"]
        except Exception as e:  # refused pickle, truncated file, missing or ill-typed entry
            raise CorruptFileError(f"{path}: not a Wild-Park-style checkpoint ({type(e).__name__}: {e})") from e
        acc = _finite_accuracy(acc, str(path))
        tensors = [v for v in state.values() if isinstance(v, Tensor)]
        spec = cnn_spec(arch)
        if [tuple(v.shape) for v in tensors] != [t.shape for t in spec.tensors]:
            raise CorruptFileError(f"{path}: tensor shapes do not match the architecture {arch.name}")
        params = {t.name: v.unsqueeze(0).float() for t, v in zip(spec.tensors, tensors, strict=True)}
        nets, rows = groups.setdefault(arch, ([], []))
        nets.append(params)
        rows.append({"run": path.parent.name, "step": path.stem, "test_accuracy": f"{acc:.6g}"})
    return {
        arch.name: CNNCheckpoints(arch, {k: torch.cat([p[k] for p in nets]) for k in nets[0]}, rows)
        for arch, (nets, rows) in groups.items()
    }


def split_runs(runs: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Each run's split, drawn from ``seed``: ``test_fraction`` of the runs test, ``val_fraction``
    validation, the rest train. By run, never by checkpoint: no run has checkpoints in two splits."""
    order = torch.randperm(len(runs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test, n_val = round(test_fraction * len(runs)), round(val_fraction * len(runs))
    split = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(runs) - n_test - n_val)
    return {runs[i]: split[k] for k, i in enumerate(order)}


def write_imported_cnn_zoo(
    out: str | Path,
    zoo: dict[str, CNNCheckpoints],
    family: str,
    recipe: dict,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict:
    """Store a published CNN zoo (:func:`read_small_cnn_zoo`, :func:`read_wild_park`) in the
    ``cnn_zoo`` stage's format: one shard per architecture, a manifest row per checkpoint (its
    run, architecture, split, step and test accuracy) and ``zoo.json`` (``family``, the
    architectures, ``recipe``). Runs are split by :func:`split_runs` (a row without a ``run`` is
    a run of its own: keep one checkpoint per run, as the Small CNN Zoo's final ``step`` does).
    Written as one generation; a non-empty ``out`` that is not an earlier import is refused."""
    final = Path(out)
    check_replaceable(final)
    names = sorted(zoo)
    runs = [(a, i, r.get("run", f"{a}/{i}")) for a, name in enumerate(names) for i, r in enumerate(zoo[name].rows)]
    split_of = split_runs(sorted({run for _, _, run in runs}), val_fraction, test_fraction, seed)
    run_id = {run: k for k, run in enumerate(sorted(split_of))}
    rows, net_id, acc = [], 0, []
    with staged_dir(final) as tmp:
        for a, name in enumerate(names):
            ckpt, spec = zoo[name], cnn_spec(zoo[name].arch)
            ids = torch.arange(net_id, net_id + len(ckpt.rows))
            net_id += len(ckpt.rows)
            write_shard(
                tmp / "shards" / shard_name(a), ckpt.params, spec, {"net_id": ids}, f"import:{recipe['format']}"
            )
            for i, h, r in zip(ids.tolist(), net_hashes(ckpt.params, spec), ckpt.rows, strict=True):
                run = runs[i][2]
                acc.append(float(r["test_accuracy"]))
                rows.append(
                    {"net_id": i, "run_id": run_id[run], "arch_index": a, "split": split_of[run]}
                    | {"step": r.get("step", ""), "test_acc": f"{acc[-1]:.6g}", "shard": shard_name(a), "sha256": h}
                )
        write_rows(tmp / "manifest.csv", rows)
        t = torch.tensor(acc)
        counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
        summary = {"n_nets": len(rows), "n_runs": len(run_id), "n_architectures": len(names), "counts": counts}
        summary |= {"test_acc_mean": float(t.mean()), "test_acc_min": float(t.min()), "test_acc_max": float(t.max())}
        info = {"family": family, "architectures": [zoo[n].arch.to_dict() for n in names], "recipe": recipe}
        write_json(tmp / "zoo.json", info | {"summary": summary})
    return summary


CNN_FORMATS = {"small_cnn_zoo": ("homogeneous", read_small_cnn_zoo), "wild_park": ("heterogeneous", read_wild_park)}


def import_cnn_zoo(fmt: str, src: Path, out: Path, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """A published CNN zoo (:data:`CNN_FORMATS`: the Small CNN Zoo's final checkpoints, or
    Wild-Park-style checkpoints) in ``src`` stored as a CNN zoo of its family in ``out``
    (:func:`write_imported_cnn_zoo`); a checkpoint without a test accuracy (the target) is
    refused before anything is written. Returns the zoo's summary."""
    family, reader = CNN_FORMATS[fmt]
    zoo = reader(src)
    missing = [(name, i) for name, c in zoo.items() for i, r in enumerate(c.rows) if "test_accuracy" not in r]
    if missing:
        name, i = missing[0]
        raise CorruptFileError(
            f"{src}: {len(missing)} checkpoint(s) without a test_accuracy, the target (first: {name}, row {i + 1})"
        )
    recipe = {"format": fmt, "source": str(src), "val_fraction": val_fraction, "test_fraction": test_fraction}
    summary = write_imported_cnn_zoo(out, zoo, family, recipe | {"seed": seed}, val_fraction, test_fraction, seed)
    return summary | {"what": f"{fmt} CNN checkpoints ({family})"}
