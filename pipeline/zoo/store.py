"""Zoo storage: shards of hundreds of nets, a per-net manifest, resume and integrity checks.

Layout of a zoo directory::

    zoo.json            spec, fit settings, split indices, fingerprint
    shards/shard_00000.safetensors   params (B, ...) per spec tensor + net_id, mse, psnr, steps,
                                     net_sha256 (B, 32)
    manifest.csv        one row per net: net_id, image_index, label, split, seed, mse, psnr,
                        steps, diverged, shard, sha256

A shard carries in its metadata the fingerprint of the plan that produced it, and in a
``net_sha256`` tensor ``(B, 32)`` the SHA-256 of every net (in the order of ``net_id``),
computed from the parameters when the shard is written (:func:`net_hashes`). Every
reader checks the data against those hashes: a shard is what it said when it was written, and
the manifest's ``sha256`` column is copied from them, never recomputed from a possibly damaged
file. On re-runs (resume) a shard whose fingerprint matches and whose data matches its hashes
is complete and skipped; any other is refitted (a damaged one with a warning naming it).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from pipeline.io import (
    RETIRED,
    CorruptFileError,
    load_tensors,
    read_json,
    read_metadata,
    retire,
    save_tensors,
    tensor_hash,
    write_text,
)
from pipeline.weightspace.spec import Params, ParamSpec

log = logging.getLogger(__name__)

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


HASHES = "net_sha256"  # (B, 32) uint8 tensor of every shard: the nets' SHA-256 digests


def write_shard(path: Path, params: Params, spec: ParamSpec, extras: dict[str, Tensor], fp: str) -> None:
    """Atomically store one shard with its per-net hashes (tensor ``net_sha256``); ``fp`` (the
    plan fingerprint) goes into its metadata. ``extras`` must hold ``net_id`` ``(B,)``, no id twice.

    The metadata holds nothing else: safetensors writes metadata keys in random order, so a
    second key would make equal shards differ in bytes.
    """
    ids = extras["net_id"].tolist() if "net_id" in extras else None
    if ids is None or len(ids) != len(set(ids)):
        raise ValueError(f"{path}: a shard needs a net_id tensor without duplicates, got {ids}")
    tensors = {f"params.{t.name}": params[t.name] for t in spec.tensors}
    tensors.update(extras)
    tensors[HASHES] = torch.tensor([list(bytes.fromhex(h)) for h in net_hashes(params, spec)], dtype=torch.uint8)
    save_tensors(path, tensors, metadata={"fingerprint": fp})


def _row_hashes(tensors: dict[str, Tensor]) -> list[str]:
    """SHA-256 of each net's parameters: its rows of ``tensors`` concatenated in name order."""
    flat = torch.cat([tensors[n].reshape(tensors[n].shape[0], -1) for n in sorted(tensors)], dim=1)
    return [tensor_hash(row) for row in flat]


def net_hashes(params: Params, spec: ParamSpec) -> list[str]:
    """Per-net SHA-256 over the parameters, the spec's tensors concatenated in name order
    (a canonical order: a shard's hashes are checked without its spec)."""
    return _row_hashes({t.name: params[t.name] for t in spec.tensors})


def verify_shard(path: Path) -> tuple[dict[str, Tensor], list[int], list[str]]:
    """Load a shard and check it against the hashes stored when it was written.

    Returns ``(tensors without the hashes, net ids, stored hashes)``. Raises
    :class:`CorruptFileError` naming the file (and the net) if it is unreadable, lacks
    ``net_id`` or its hashes, holds a net id twice, or a net's data differs from its hash.
    """
    data = load_tensors(path)
    if "net_id" not in data:
        raise CorruptFileError(f"{path}: shard lacks its net_id tensor")
    ids = data["net_id"].tolist()
    check_unique_ids(path, ids)
    if HASHES not in data:
        raise CorruptFileError(
            f"{path}: shard has no stored per-net hashes (written by an older metazoo: re-run its stage)"
        )
    digests = data.pop(HASHES)
    if digests.dtype != torch.uint8 or tuple(digests.shape) != (len(ids), 32):
        raise CorruptFileError(f"{path}: stored hashes {tuple(digests.shape)} are not one SHA-256 per net")
    stored = [bytes(row).hex() for row in digests.tolist()]
    params = {k[len("params.") :]: v for k, v in data.items() if k.startswith("params.")}
    if not params or any(v.shape[0] != len(ids) for v in params.values()):
        raise CorruptFileError(f"{path}: parameter tensors do not hold one row per net")
    for net_id, want, got in zip(ids, stored, _row_hashes(params), strict=True):
        if want != got:
            raise CorruptFileError(f"{path}: net {net_id} does not match the hash stored when the shard was written")
    return data, ids, stored


def shard_is_complete(path: Path, fp: str) -> bool:
    """True if ``path`` exists, was written for plan ``fp`` and its data matches its stored hashes.

    A damaged shard (unreadable, or data that differs from its hashes) is not complete: a
    warning naming it is printed and it is refitted (resume loses nothing by refitting).
    """
    if not path.exists():
        return False
    try:
        if read_metadata(path).get("fingerprint") != fp:
            return False
        verify_shard(path)
    except CorruptFileError as e:
        log.warning("refitting damaged shard %s: %s", path, e)
        return False
    return True


def _shard_fingerprint(path: Path) -> str:
    try:
        return read_metadata(path).get("fingerprint") or "unreadable"
    except CorruptFileError:
        return "unreadable"


def plan_shard_dir(shard_dir: Path, fingerprints: list[str]) -> list[int]:
    """The shards ``k`` still to fit for plan ``fingerprints``, with nothing finished deleted.

    A shard file beyond the plan, or made for another fingerprint than its slot's, moves to
    ``<shard_dir>/retired/<its fingerprint>/``; a slot whose fingerprint is retired there gets
    that shard back, checked against its hashes, instead of a refit. The caller holds the
    zoo folder's lock (:func:`pipeline.io.folder_lock`).
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(shard_dir.glob("shard_*.safetensors")):
        if int(f.stem.split("_")[1]) >= len(fingerprints):
            retire([f], shard_dir, _shard_fingerprint(f))
    todo = []
    for k, fp in enumerate(fingerprints):
        path = shard_dir / shard_name(k)
        if shard_is_complete(path, fp):
            continue
        if path.exists():
            retire([path], shard_dir, _shard_fingerprint(path))
        back = sorted((shard_dir / RETIRED / fp).glob("shard_*.safetensors"))
        if back and shard_is_complete(back[0], fp):
            os.replace(back[0], path)
            log.info("%s: brought back from %s, not refitted", path, back[0].parent)
            continue
        todo.append(k)
    return todo


def read_shard(path: Path, spec: ParamSpec) -> tuple[Params, dict[str, Tensor]]:
    """Load one shard unchecked: ``(params, extras)``; raises :class:`CorruptFileError` naming the file."""
    data = load_tensors(path)
    data.pop(HASHES, None)
    return _split(path, data, spec)


def _split(path: Path, data: dict[str, Tensor], spec: ParamSpec) -> tuple[Params, dict[str, Tensor]]:
    try:
        params = {t.name: data.pop(f"params.{t.name}") for t in spec.tensors}
    except KeyError as e:
        raise CorruptFileError(f"{path}: shard lacks tensor {e}") from e
    extra_params = sorted(k for k in data if k.startswith("params."))
    if extra_params:
        raise CorruptFileError(f"{path}: shard holds tensors {extra_params} its spec does not have")
    return params, data


def read_verified_shard(path: Path, spec: ParamSpec) -> tuple[Params, dict[str, Tensor], list[str]]:
    """``(params, extras, stored per-net hashes)`` of a shard checked by :func:`verify_shard`;
    raises :class:`CorruptFileError` naming the file if its tensors are not ``spec``'s."""
    data, _, stored = verify_shard(path)
    params, extras = _split(path, data, spec)
    for t in spec.tensors:
        if tuple(params[t.name].shape[1:]) != tuple(t.shape):
            raise CorruptFileError(f"{path}: {t.name} {tuple(params[t.name].shape[1:])}, the spec has {t.shape}")
    return params, extras, stored


def read_planned_shard(path: Path, spec: ParamSpec, net_ids: list[int]) -> tuple[Params, dict[str, Tensor], list[str]]:
    """:func:`read_verified_shard` of a shard that must hold exactly ``net_ids``, in that order."""
    params, extras, stored = read_verified_shard(path, spec)
    if extras["net_id"].tolist() != list(net_ids):
        raise CorruptFileError(f"{path}: holds nets {extras['net_id'].tolist()[:5]}..., its plan says {net_ids[:5]}...")
    return params, extras, stored


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
        records = [
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
    check_unique_ids(path, [r.net_id for r in records])
    return records


def check_unique_ids(path: Path, ids: list[int]) -> None:
    """Raise :class:`CorruptFileError` naming ``path`` if a net id occurs twice in ``ids``."""
    seen: set[int] = set()
    dup = sorted({i for i in ids if i in seen or seen.add(i)})
    if dup:
        raise CorruptFileError(f"{path}: net ids {dup[:5]} occur more than once")


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

    Returns ``(params, net ids, extras)``. Each shard's data is checked against the hashes
    stored with it, and those against ``hash_by_id`` (the manifest); a net id in two shards is
    refused. Raises :class:`CorruptFileError` naming the shard (and the net) on any mismatch or
    an unreadable file. ``verify=False`` skips the hash checks (not the duplicate check).
    """
    chunks: dict[str, list[Tensor]] = {t.name: [] for t in spec.tensors}
    extra_chunks: dict[str, list[Tensor]] = {}
    ids: list[int] = []
    shard_of: dict[int, Path] = {}
    for path in sorted((zoo_dir / "shards").glob("shard_*.safetensors")):
        if verify:
            params, extras, stored = read_verified_shard(path, spec)
        else:
            params, extras = read_shard(path, spec)
            stored = [None] * len(extras["net_id"]) if "net_id" in extras else []
        if "net_id" not in extras:
            raise CorruptFileError(f"{path}: shard lacks its net_id tensor")
        shard_ids = extras["net_id"].tolist()
        check_unique_ids(path, shard_ids)
        for net_id in shard_ids:
            if net_id in shard_of:
                raise CorruptFileError(f"{path}: net {net_id} is also stored in {shard_of[net_id].name}")
            shard_of[net_id] = path
        if not any(i in hash_by_id for i in shard_ids):
            continue
        if verify:
            for net_id, h in zip(shard_ids, stored, strict=True):
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
    """Load every shard of a zoo, checking each net against the hash stored with its shard and
    against the manifest.

    Raises :class:`CorruptFileError` naming the shard (and net) if a file is unreadable, a hash
    differs or a net id occurs twice (naming the manifest if it lists a net twice).
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


def load_spec_zoo(zoo_dir: str | Path, verify: bool = True) -> tuple[ParamSpec, Params, list[dict[str, str]], dict]:
    """``(spec, params, manifest rows, zoo.json)`` of a zoo of one weight space whose
    ``zoo.json`` holds its ``spec`` (KAN and domain-adaptation zoos), nets in manifest order.

    Every net is checked against the hash stored with its shard and against the manifest;
    :class:`~pipeline.io.CorruptFileError` names a bad shard and net, or a manifest or shard
    that lists a net id twice.
    """
    zoo_dir = Path(zoo_dir)
    info = read_json(zoo_dir / "zoo.json")
    spec = ParamSpec.from_dict(info["spec"])
    manifest = zoo_dir / "manifest.csv"
    rows = read_rows(manifest)
    try:
        ids = [int(r["net_id"]) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{manifest}: malformed manifest row ({e})") from e
    check_unique_ids(manifest, ids)
    by_id = dict(zip(ids, rows, strict=True))
    params, ids, _ = load_shards(zoo_dir, spec, {i: r["sha256"] for i, r in by_id.items()}, verify)
    return spec, params, [by_id[i] for i in ids], info
