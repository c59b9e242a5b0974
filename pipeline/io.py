"""Atomic, code-free file I/O: every write goes to a temporary file and is renamed into place.

Tensors are stored with safetensors (no pickle, so nothing executes on load).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor


class CorruptFileError(RuntimeError):
    """A stored file cannot be read or fails its integrity check; the message names it."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same directory).

    The temporary file is fsynced before the rename and the directory after it (best effort),
    so after a power loss ``path`` holds either its old or its new content, never a torn file.
    A killed writer leaves ``.<name>.*.tmp`` behind: :func:`remove_stale_temps` clears them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync_file(tmp)  # ``write`` opened (and closed) its own file: its bytes may still be in the page cache
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shards are shared on clusters
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; best effort (not possible on Windows, some filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files (``.*.tmp``, not recursive) a killed :func:`atomic_write` left.

    Call it only where no other process is writing into ``directory`` at the same time (a
    stage's driver holding :func:`folder_lock`, before it writes): a live writer's temporary
    file would be removed too.
    Returns the paths removed.
    """
    removed = []
    for tmp in sorted(Path(directory).glob(".*.tmp")):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path}: cannot read JSON ({e})") from e


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file (tensors made contiguous)."""
    data = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(data, str(p), metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file; a truncated or corrupt file raises :class:`CorruptFileError`."""
    path = Path(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"{path}: corrupt or truncated tensor file ({e})") from e


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"{path}: corrupt or truncated tensor file ({e})") from e


def tensor_hash(t: Tensor) -> str:
    """SHA-256 of a tensor's bytes (CPU, contiguous)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def save_state(path: str | Path, state: Any) -> Path:
    """Atomically write a nested state (dicts with any keys, lists, tuples, tensors, numbers,
    strings: an optimizer's ``state_dict()``, RNG states, a history) as one safetensors file:
    the tensors as tensors, the structure as JSON in its metadata. No pickle, so loading
    (:func:`load_state`) executes nothing; floats round-trip exactly."""
    tensors: dict[str, Tensor] = {}

    def encode(x: Any) -> Any:
        if isinstance(x, Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": name}
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: encode(v) for k, v in x.items()}
            return {"__items__": [[encode(k), encode(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [encode(v) for v in x]}
        if isinstance(x, list):
            return [encode(v) for v in x]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} in a state file")

    structure = json.dumps(encode(state))
    return save_tensors(path, tensors, metadata={"state": structure})


def load_state(path: str | Path) -> Any:
    """A state written by :func:`save_state`; :class:`CorruptFileError` names a damaged file."""
    tensors, meta = load_tensors(path), read_metadata(path)

    def decode(x: Any) -> Any:
        if isinstance(x, list):
            return [decode(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__items__" in x:
                return {decode(k): decode(v) for k, v in x["__items__"]}
            if "__tuple__" in x:
                return tuple(decode(v) for v in x["__tuple__"])
            return {k: decode(v) for k, v in x.items()}
        return x

    try:
        return decode(json.loads(meta["state"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{path}: not a state file ({type(e).__name__}: {e})") from e


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_hash(tensors: Tensor | Mapping[str, Any]) -> str:
    """SHA-256 over a tensor, or a (nested) mapping of tensors, in name order, with each
    tensor's name, dtype and shape: the content address of the data a task receives."""
    h = hashlib.sha256()

    def add(name: str, obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k in sorted(obj):
                add(f"{name}/{k}", obj[k])
        elif isinstance(obj, Tensor):
            h.update(f"{name}:{obj.dtype}:{tuple(obj.shape)};".encode())
            h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{name}={json.dumps(obj, sort_keys=True)};".encode())

    add("", tensors)
    return h.hexdigest()


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Write a multi-file output as one generation: yield an empty temporary sibling folder;
    when the block ends without error, it replaces ``final`` in two renames (the old
    generation is removed after the new one is in place). A writer killed inside the block
    leaves ``final`` as it was, plus a ``.<name>.staging-*`` folder that the next writer of the
    same folder removes. Readers never see a mix of two generations.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.staging-old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


RETIRED = "retired"  # <folder>/retired/<fingerprint>/: finished work that left the plan


def retire(files: list[Path], folder: Path, key: str) -> Path:
    """Move finished ``files`` (those that exist) of ``folder`` to ``folder/retired/<key>/``
    instead of deleting them; :func:`unretire` brings them back when ``key`` is planned again.
    Returns the retired folder."""
    dest = Path(folder) / RETIRED / key
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.exists():
            os.replace(f, dest / f.name)
    _fsync_dir(dest)
    return dest


def unretire(folder: Path, key: str, names: list[str]) -> bool:
    """Move ``names`` back from ``folder/retired/<key>/`` into ``folder`` if all are there."""
    src = Path(folder) / RETIRED / key
    if not all((src / n).is_file() for n in names):
        return False
    for n in names:
        os.replace(src / n, Path(folder) / n)
    if not any(src.iterdir()):
        src.rmdir()
    _fsync_dir(Path(folder))
    return True


class FolderBusy(RuntimeError):
    """Another live process writes the folder; the message names it (host, pid)."""


@contextmanager
def folder_lock(folder: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold the one-writer lock of ``folder`` (an output folder, or any file) for the block.

    The lock is ``<parent>/.<name>.lock`` (beside the folder, so it is never part of the output)
    taken with ``flock``: the operating system releases it when the holder dies, so a killed
    driver leaves no stale lock. The file records the holder's host and pid. A second writer
    raises :class:`FolderBusy` naming the holder at once, before any work; with ``wait`` it
    waits for the holder instead.
    """
    import fcntl
    import socket

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(
                f"{folder} is being written by {holder} (lock {path}): wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
