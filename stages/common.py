"""Argument parsing and error reporting shared by the stage entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import configure_logging
from pipeline.config import ConfigError, Params, load_params


def parse(description: str, paths: dict[str, str], argv: list[str] | None = None) -> tuple[Params, argparse.Namespace]:
    """``--params`` plus one ``--<name>`` option per path; exits with the bad key on a config error."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, default in paths.items():
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args(argv)
    configure_logging()
    try:
        params = load_params(args.params)
    except ConfigError as e:
        print(f"error in {args.params}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    return params, args


@contextmanager
def reported_errors(stage: str, out: Path | None = None) -> Iterator[None]:
    """Turn the errors a user acts on into one message and an exit code, without a traceback;
    hold the one-writer lock of output folder ``out`` for the block (:func:`pipeline.io.folder_lock`).

    A bad parameter or a resource the cluster lacks (:class:`ConfigError`) exits 2; a folder
    another driver writes (:class:`~pipeline.io.FolderBusy`, naming its host and pid), failed
    runs or shards (:class:`~pipeline.distributed.TasksFailed`), a tracking store that kept
    failing (:class:`~pipeline.tracking.TrackingError`) and a damaged input file
    (:class:`~pipeline.io.CorruptFileError`, which names it) exit 1: finished results are kept
    and the next invocation resumes.
    """
    from contextlib import nullcontext

    from pipeline.distributed import TasksFailed
    from pipeline.io import CorruptFileError, FolderBusy, folder_lock
    from pipeline.tracking import TrackingError

    try:
        with folder_lock(out) if out is not None else nullcontext():
            yield
    except ConfigError as e:
        print(f"{stage}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    except (FolderBusy, TasksFailed, TrackingError, CorruptFileError) as e:
        print(f"{stage}: {e}", file=sys.stderr)
        raise SystemExit(1) from e
