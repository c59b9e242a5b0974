"""Atomic, code-free file I/O: every write goes to a temporary file and is renamed into place.

Tensors are stored with safetensors (no pickle, so nothing executes on load).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    stage's driver, before it writes): a live writer's temporary file would be removed too.
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


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
