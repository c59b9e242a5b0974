"""Import a published INR data set (DWSNets or NFN layout) as a metazoo zoo directory.

Not a DVC stage of the default pipeline (the files need a download). After
``python -m stages.import_zoo --format dwsnets --src <dir> --out data/zoo_dwsnets`` the ``graphs``
stage reads it like a zoo we fitted: ``python -m stages.graphs --zoo data/zoo_dwsnets --out
data/graphs_dwsnets``. Every file is loaded with ``torch.load(weights_only=True)``; a net with a
non-finite parameter, a label that is not an integer in 0..9, a file listed twice (in two splits:
test leakage), a file or ``splits.json`` entry that resolves outside ``--src``, or an ``--out``
that holds something other than an earlier import is refused with a message naming the file.
The zoo is written as one generation: an earlier import there is replaced whole.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import configure_logging
from pipeline.io import CorruptFileError, FolderBusy, folder_lock
from pipeline.zoo.published import (
    carve_validation,
    check_listing,
    dwsnets_files,
    nfn_files,
    read_inrs,
    write_imported_zoo,
)

log = logging.getLogger("stages.import_zoo")  # its name also when run as ``python -m``


FORMATS = {
    # format: (file lister, SIREN omega0, output-offset variant)
    "dwsnets": (dwsnets_files, 30.0, "dwsnets"),
    "nfn": (nfn_files, 30.0, "standard"),
}


def run(fmt: str, src: Path, out: Path, val_fraction: float, seed: int, omega0: float | None = None) -> dict:
    lister, default_omega, variant = FORMATS[fmt]
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
    log.info(
        "import_zoo: %d %s INRs %s -> %s (splits %s)", summary["n_nets"], fmt, spec.layer_sizes, out, summary["counts"]
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--format", required=True, choices=sorted(FORMATS))
    ap.add_argument("--src", required=True, type=Path, help="the downloaded data set's directory")
    ap.add_argument("--out", required=True, type=Path, help="zoo directory to write")
    ap.add_argument("--val-fraction", type=float, default=1 / 12, help="of the training INRs, if no validation split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omega0", type=float, default=None, help="SIREN frequency (default: the format's, 30)")
    args = ap.parse_args(argv)
    configure_logging()
    if not 0 <= args.val_fraction < 1:
        ap.error(f"--val-fraction: {args.val_fraction} is out of range (allowed: [0, 1))")
    if not args.src.is_dir():
        ap.error(f"--src: {args.src} is not a directory")
    try:
        with folder_lock(args.out):
            run(args.format, args.src, args.out, args.val_fraction, args.seed, args.omega0)
    except (CorruptFileError, FolderBusy) as e:
        raise SystemExit(f"import_zoo: {e}") from e


if __name__ == "__main__":
    main()
