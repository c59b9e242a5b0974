"""A shard is what it said when it was written: stored per-net hashes, checked on every read.

Real files throughout: shards written by the store, bytes flipped in their tensor data, stage
processes run as a user runs them, the KAN kernel built by torch with a planted stale lock.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.io import (
    CorruptFileError,
    atomic_write,
    load_tensors,
    read_metadata,
    remove_stale_temps,
    save_tensors,
    write_json,
)
from pipeline.provenance import cpu_tag
from pipeline.weightspace.spec import ParamSpec
from pipeline.zoo.build import plan_inr_zoo, records_from_shards, shard_plan
from pipeline.zoo.kan import init_kans, kan_spec
from pipeline.zoo.kan_zoo import load_kan_zoo
from pipeline.zoo.store import (
    load_zoo,
    net_hashes,
    read_manifest,
    shard_is_complete,
    shard_name,
    verify_shard,
    write_manifest,
    write_rows,
    write_shard,
)
from tests.conftest import REPO, run_stage, siren_params, write_params

# --------------------------------------------------------------------------------------------
# Small zoos written directly by the store (no fitting): 12 SIRENs, 3 shards of 4
# --------------------------------------------------------------------------------------------


def _siren_zoo(zoo: Path, n: int = 12, shard_size: int = 4, manifest: bool = True) -> ParamSpec:
    spec, params = siren_params([8, 8], range(n))
    labels = torch.arange(n) % 10
    thirds = torch.arange(n).chunk(3)
    plan = plan_inr_zoo(labels, dict(zip(("train", "val", "test"), thirds, strict=True)), 1, zoo_seed=0)
    shards = shard_plan(plan, shard_size)
    for k, nets in enumerate(shards):
        idx = torch.tensor([p.net_id for p in nets])
        extras = {"net_id": idx, "mse": torch.full((len(idx),), 1e-3), "psnr": torch.full((len(idx),), 30.0)}
        extras["steps"] = torch.full((len(idx),), 5)
        write_shard(zoo / "shards" / shard_name(k), {t: v[idx] for t, v in params.items()}, spec, extras, f"fp{k}")
    if manifest:
        write_manifest(zoo / "manifest.csv", records_from_shards(zoo / "shards", shards, spec, psnr_floor=5.0))
    fit = {"omega0": 30.0, "variant": "standard"}
    write_json(zoo / "zoo.json", {"spec": spec.to_dict(), "recipe": {"fit": fit}, "image_shape": [28, 28]})
    return spec


def _flip_data_byte(path: Path, tensor: str, net: int) -> None:
    """Flip one byte of net ``net``'s slice of ``tensor`` in the data region (after the header)."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + header_len])[tensor]
    start, end = entry["data_offsets"]
    per_net = (end - start) // entry["shape"][0]
    at = 8 + header_len + start + net * per_net + 2
    raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_hashes_are_stored_with_the_shard_when_written(tmp_path: Path):
    spec = _siren_zoo(tmp_path)
    path = tmp_path / "shards" / shard_name(1)
    _, params = siren_params([8, 8], range(12))
    stored = _stored_hashes(path)
    assert stored == net_hashes({k: v[4:8] for k, v in params.items()}, spec)
    assert [r.sha256 for r in read_manifest(tmp_path / "manifest.csv")][4:8] == stored
    assert read_metadata(path) == {"fingerprint": "fp1"}  # one key: safetensors writes keys in random order
    again = tmp_path / "again"
    _siren_zoo(again)
    assert (again / "shards" / shard_name(1)).read_bytes() == path.read_bytes()  # the same writes, same inputs


def _stored_hashes(path: Path) -> list[str]:
    return [bytes(row).hex() for row in load_tensors(path)["net_sha256"].tolist()]


def test_flipped_byte_is_named_by_load_zoo(tmp_path: Path):
    _siren_zoo(tmp_path)
    victim = tmp_path / "shards" / shard_name(1)
    _flip_data_byte(victim, "params.layers.1.weight", net=2)  # shard 1 holds nets 4..7
    with pytest.raises(CorruptFileError, match=r"shard_00001\.safetensors: net 6 does not match"):
        load_zoo(tmp_path)


def test_flipped_byte_before_the_manifest_is_refused_not_copied(tmp_path: Path):
    """The bug this guards against: the manifest hashed the shard as found, damage included."""
    spec = _siren_zoo(tmp_path, manifest=False)
    victim = tmp_path / "shards" / shard_name(2)
    _flip_data_byte(victim, "params.layers.0.bias", net=0)
    plan = plan_inr_zoo(torch.arange(12) % 10, {"train": torch.arange(12)}, 1, zoo_seed=0)
    with pytest.raises(CorruptFileError, match=r"shard_00002\.safetensors: net 8 does not match"):
        records_from_shards(tmp_path / "shards", shard_plan(plan, 4), spec, psnr_floor=5.0)


@pytest.mark.slow
def test_graphs_stage_fails_naming_the_damaged_shard(tmp_path: Path):
    zoo = tmp_path / "zoo"
    _siren_zoo(zoo)
    _flip_data_byte(zoo / "shards" / shard_name(0), "params.layers.2.weight", net=3)
    params = write_params(tmp_path / "params.yaml")
    res = run_stage("graphs", ["--params", str(params), "--zoo", str(zoo), "--out", str(tmp_path / "g")], tmp_path)
    assert res.returncode != 0
    assert "shard_00000.safetensors: net 3 does not match" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "g" / "train.safetensors").exists()


def test_kan_zoo_shards_carry_hashes_and_a_flipped_byte_is_named(tmp_path: Path):
    spec = kan_spec([2, 3, 1], 3, 3)
    params = init_kans(spec, list(range(6)))
    ids = torch.arange(6)
    write_shard(tmp_path / "shards" / shard_name(0), params, spec, {"net_id": ids, "mse": torch.rand(6)}, "fp")
    hashes = _stored_hashes(tmp_path / "shards" / shard_name(0))
    rows = [{"net_id": i, "split": "train", "shard": shard_name(0), "sha256": hashes[i]} for i in range(6)]
    write_rows(tmp_path / "manifest.csv", rows)
    write_json(tmp_path / "zoo.json", {"task": "inr", "spec": spec.to_dict()})
    assert load_kan_zoo(tmp_path)[1]["layers.0.coef"].shape[0] == 6

    _flip_data_byte(tmp_path / "shards" / shard_name(0), "params.layers.1.coef", net=5)
    with pytest.raises(CorruptFileError, match=r"shard_00000\.safetensors: net 5 does not match"):
        load_kan_zoo(tmp_path)

    write_rows(tmp_path / "manifest.csv", rows + rows[:1])
    with pytest.raises(CorruptFileError, match=r"manifest\.csv: net ids \[0\] occur more than once"):
        load_kan_zoo(tmp_path)


# --------------------------------------------------------------------------------------------
# Duplicate net ids
# --------------------------------------------------------------------------------------------


def test_duplicate_net_ids_are_refused(tmp_path: Path):
    spec = _siren_zoo(tmp_path)
    _, params = siren_params([8, 8], range(2))
    with pytest.raises(ValueError, match="duplicates"):
        write_shard(tmp_path / "x.safetensors", params, spec, {"net_id": torch.tensor([3, 3])}, "fp")

    # within a shard (its stored hashes otherwise correct)
    shard = tmp_path / "shards" / shard_name(1)
    tensors = load_tensors(tmp_path / "shards" / shard_name(0))
    tensors["net_id"][1] = tensors["net_id"][0]
    save_tensors(shard, tensors, metadata={"fingerprint": "fp1"})
    with pytest.raises(CorruptFileError, match=r"shard_00001\.safetensors: net ids \[0\] occur more than once"):
        verify_shard(shard)
    with pytest.raises(CorruptFileError, match=r"shard_00001\.safetensors"):
        load_zoo(tmp_path)

    # across shards: an extra shard that repeats net 9 of shard_00002
    _siren_zoo(tmp_path)
    ids = torch.tensor([9, 12])
    write_shard(tmp_path / "shards" / shard_name(3), params, spec, {"net_id": ids}, "fp3")
    with pytest.raises(CorruptFileError, match=r"shard_00003\.safetensors: net 9 is also stored in shard_00002"):
        load_zoo(tmp_path)

    # in the manifest
    _siren_zoo(tmp_path)
    (tmp_path / "shards" / shard_name(3)).unlink()
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    (tmp_path / "manifest.csv").write_text("\n".join([*lines, lines[5]]) + "\n")
    with pytest.raises(CorruptFileError, match=r"manifest\.csv: net ids \[4\] occur more than once"):
        load_zoo(tmp_path)


def test_shard_without_stored_hashes_is_refused(tmp_path: Path):
    spec, params = siren_params([8, 8], range(2))
    path = tmp_path / shard_name(0)
    tensors = {f"params.{t.name}": params[t.name] for t in spec.tensors} | {"net_id": torch.arange(2)}
    save_tensors(path, tensors, metadata={"fingerprint": "fp"})
    with pytest.raises(CorruptFileError, match=r"shard_00000\.safetensors: shard has no stored per-net hashes"):
        verify_shard(path)


# --------------------------------------------------------------------------------------------
# Resume and temporary files
# --------------------------------------------------------------------------------------------


def test_shard_is_complete_only_if_its_data_matches_its_hashes(tmp_path: Path, caplog):
    _siren_zoo(tmp_path)
    path = tmp_path / "shards" / shard_name(1)
    assert shard_is_complete(path, "fp1")
    assert not shard_is_complete(path, "other plan")
    assert not caplog.records
    _flip_data_byte(path, "params.layers.0.weight", net=1)
    assert not shard_is_complete(path, "fp1")
    err = caplog.text
    assert "refitting damaged shard" in err and "shard_00001.safetensors: net 5 does not match" in err
    caplog.clear()
    path.write_bytes(path.read_bytes()[:100])  # unreadable: refitted as well
    assert not shard_is_complete(path, "fp1")
    assert "shard_00001.safetensors" in caplog.text


def test_remove_stale_temps_and_atomic_write_leaves_none(tmp_path: Path):
    atomic_write(tmp_path / "a.txt", lambda p: p.write_text("a"))
    stale = [tmp_path / ".manifest.csv.abc123.tmp", tmp_path / ".zoo.json.x.tmp"]
    for p in stale:
        p.write_text("half")
    keep = [tmp_path / "a.txt", tmp_path / "sub" / ".deep.tmp", tmp_path / "notes.tmp"]
    keep[1].parent.mkdir()
    for p in keep[1:]:
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == sorted(stale)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
    assert remove_stale_temps(tmp_path / "missing") == []


@pytest.mark.slow
def test_resume_refits_a_damaged_shard_and_clears_stale_temps(tmp_path: Path):
    over = {
        "data": {"n_train": 8, "n_val": 4, "n_test": 4},
        "zoo": {"steps": 10, "shard_size": 8, "chunk_size": 8},
        "ray": {"num_cpus": 1},
    }
    params = write_params(tmp_path / "params.yaml", over)
    out = tmp_path / "zoo"
    args = ["--params", str(params), "--out", str(out)]
    res = run_stage("zoo", args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    victim = out / "shards" / shard_name(1)
    original = victim.read_bytes()
    manifest = (out / "manifest.csv").read_text()
    _flip_data_byte(victim, "params.layers.1.weight", net=3)
    stale = [out / "shards" / f".{shard_name(0)}.k1ll3d.tmp", out / ".manifest.csv.k1ll3d.tmp"]
    for p in stale:
        p.write_text("partial")

    res = run_stage("zoo", args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refitting damaged shard" in res.stderr and "shard_00001.safetensors: net 11 does not match" in res.stderr
    assert "2 shards, 1 complete, fitting 1" in res.stderr
    assert victim.read_bytes() == original  # refitted to the same bytes: the same shard, batch and order
    assert (out / "manifest.csv").read_text() == manifest
    assert not any(p.exists() for p in stale)
    assert len(load_zoo(out).records) == 16


# --------------------------------------------------------------------------------------------
# The fused KAN kernel's first build cannot hang on a killed build's lock
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kan_kernel_build_clears_a_stale_lock_but_waits_for_a_live_build(tmp_path: Path):
    import fcntl

    from pipeline.zoo import kan

    if kan.spline_kernel() is None:
        pytest.skip("no C++ toolchain: the KAN kernel cannot be built here")
    name = f"metazoo_kan_spline_{cpu_tag()}"
    built = kan._kernel_build_dir(name)
    ext_root = tmp_path / "ext"
    build_dir = ext_root / name
    # reuse this machine's build (ninja finds it up to date), else the subprocess builds it (~1 min)
    shutil.copytree(built, build_dir, ignore=shutil.ignore_patterns("lock", "metazoo_build.flock"))
    baton = build_dir / "lock"
    baton.write_text("")  # torch's FileBaton, as a build killed midway leaves it

    env = {k: v for k, v in os.environ.items() if k != "METAZOO_KAN_KERNEL"} | {"TORCH_EXTENSIONS_DIR": str(ext_root)}
    code = "from pipeline.zoo.kan import kan_backend; print('backend', kan_backend(), flush=True)"
    with open(build_dir / "metazoo_build.flock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live build holds the lock: its baton must stay
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            lines = []
            while not lines or ("waiting for another process" not in lines[-1] and lines[-1]):
                lines.append(proc.stderr.readline())  # '' once the process has ended
            assert "waiting for another process building it" in lines[-1], "".join(lines)
            time.sleep(1.0)
            assert baton.exists() and proc.poll() is None
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)  # the holder dies: the kernel releases its flock, its baton stays
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        proc.kill()
    assert "removed the stale build lock" in err and "left by a killed build" in err, err[-3000:]
    assert str(baton) in err
    assert "backend fused-cpu" in out, err[-3000:]
    assert not baton.exists()
