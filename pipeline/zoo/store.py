"""Zoo storage: shards of hundreds of nets, a per-net manifest, resume and integrity checks.

Layout of a zoo directory::

    zoo.json            spec, fit settings, split indices, fingerprint
    shards/shard_00000.safetensors   params (B, ...) per spec tensor + net_id, mse, psnr, steps
    manifest.csv        one row per net: net_id, image_index, label, split, seed, mse, psnr,
                        steps, diverged, shard, sha256

A shard carries the fingerprint of the plan that produced it in its metadata; a shard whose
fingerprint matches is complete and is skipped on re-runs (resume), any other is refitted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from pipeline.io import CorruptFileError, load_tensors, read_json, read_metadata, save_tensors, tensor_hash, write_text
from pipeline.weightspace.spec import Params, ParamSpec, flatten

MANIFEST_FIELDS = (
    "net_id",
    "image_index",
    "label",
    "split",
    "seed",
    "mse",
    "psnr",
    "steps",
    "diverged",
    "shard",
    "sha256",
)


@dataclass(frozen=True)
class NetRecord:
    """One row of the manifest."""

    net_id: int
    image_index: int
    label: int
    split: str
    seed: int
    mse: float
    psnr: float
    steps: int
    diverged: bool
    shard: str
    sha256: str


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def write_shard(path: Path, params: Params, spec: ParamSpec, extras: dict[str, Tensor], fp: str) -> None:
    """Atomically store one shard; ``fp`` (the plan fingerprint) goes into its metadata."""
    tensors = {f"params.{t.name}": params[t.name] for t in spec.tensors}
    tensors.update(extras)
    save_tensors(path, tensors, metadata={"fingerprint": fp})


def shard_is_complete(path: Path, fp: str) -> bool:
    """True if ``path`` exists and was written for plan ``fp``; corrupt files raise."""
    if not path.exists():
        return False
    return read_metadata(path).get("fingerprint") == fp


def read_shard(path: Path, spec: ParamSpec) -> tuple[Params, dict[str, Tensor]]:
    """Load one shard: ``(params, extras)``; raises :class:`CorruptFileError` naming the file."""
    data = load_tensors(path)
    try:
        params = {t.name: data.pop(f"params.{t.name}") for t in spec.tensors}
    except KeyError as e:
        raise CorruptFileError(f"{path}: shard lacks tensor {e}") from e
    return params, data


def net_hashes(params: Params, spec: ParamSpec) -> list[str]:
    """Per-net SHA-256 over the flattened parameters."""
    flat = flatten(params, spec)
    return [tensor_hash(row) for row in flat]


def write_manifest(path: Path, records: list[NetRecord]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in sorted(records, key=lambda r: r.net_id):
        row = asdict(r)
        row["mse"], row["psnr"] = f"{r.mse:.6e}", f"{r.psnr:.4f}"
        row["diverged"] = int(r.diverged)
        w.writerow(row)
    write_text(path, buf.getvalue())


def read_manifest(path: Path) -> list[NetRecord]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot read manifest ({e})") from e
    try:
        return [
            NetRecord(
                int(r["net_id"]),
                int(r["image_index"]),
                int(r["label"]),
                r["split"],
                int(r["seed"]),
                float(r["mse"]),
                float(r["psnr"]),
                int(r["steps"]),
                bool(int(r["diverged"])),
                r["shard"],
                r["sha256"],
            )
            for r in rows
        ]
    except (KeyError, ValueError) as e:
        raise CorruptFileError(f"{path}: malformed manifest row ({e})") from e


@dataclass
class Zoo:
    """A loaded zoo: all nets' parameters in manifest order, their records and spec."""

    spec: ParamSpec
    params: Params
    records: list[NetRecord]
    info: dict

    def select(self, split: str, include_diverged: bool = False) -> tuple[Params, list[NetRecord]]:
        """Parameters and records of one split (diverged nets excluded by default)."""
        keep = [i for i, r in enumerate(self.records) if r.split == split and (include_diverged or not r.diverged)]
        idx = torch.tensor(keep, dtype=torch.long)
        return {k: v[idx] for k, v in self.params.items()}, [self.records[i] for i in keep]


def load_shards(
    zoo_dir: Path, spec: ParamSpec, hash_by_id: dict[int, str], verify: bool = True
) -> tuple[Params, list[int], dict[str, Tensor]]:
    """Every shard of ``zoo_dir/shards`` that holds a net of ``hash_by_id``, in shard order.

    Returns ``(params, net ids, extras)``; each net's hash is checked against ``hash_by_id``
    (raises :class:`CorruptFileError` naming the shard on a mismatch or an unreadable file).
    """
    chunks: dict[str, list[Tensor]] = {t.name: [] for t in spec.tensors}
    extra_chunks: dict[str, list[Tensor]] = {}
    ids: list[int] = []
    for path in sorted((zoo_dir / "shards").glob("shard_*.safetensors")):
        params, extras = read_shard(path, spec)
        shard_ids = extras["net_id"].tolist()
        if not any(i in hash_by_id for i in shard_ids):
            continue
        if verify:
            for net_id, h in zip(shard_ids, net_hashes(params, spec), strict=True):
                if hash_by_id.get(net_id) != h:
                    raise CorruptFileError(f"{path}: net {net_id} does not match its manifest hash")
        for t in spec.tensors:
            chunks[t.name].append(params[t.name])
        for k, v in extras.items():
            extra_chunks.setdefault(k, []).append(v)
        ids.extend(shard_ids)
    missing = set(hash_by_id) - set(ids)
    if missing:
        raise CorruptFileError(f"{zoo_dir / 'shards'}: no shard holds nets {sorted(missing)[:5]} of the manifest")
    return {k: torch.cat(v) for k, v in chunks.items()}, ids, {k: torch.cat(v) for k, v in extra_chunks.items()}


def load_zoo(zoo_dir: str | Path, verify: bool = True) -> Zoo:
    """Load every shard of a zoo, checking each net's hash against the manifest.

    Raises :class:`CorruptFileError` naming the shard if a file is unreadable or a hash differs.
    """
    zoo_dir = Path(zoo_dir)
    info = read_json(zoo_dir / "zoo.json")
    spec = ParamSpec.from_dict(info["spec"])
    records = read_manifest(zoo_dir / "manifest.csv")
    by_id = {r.net_id: r for r in records}
    params, ids, _ = load_shards(zoo_dir, spec, {r.net_id: r.sha256 for r in records}, verify)
    return Zoo(spec, params, [by_id[i] for i in ids], info)


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV table with the keys of the first row as header (atomic)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV table written by :func:`write_rows`; raises :class:`CorruptFileError` naming it."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot read table ({e})") from e
