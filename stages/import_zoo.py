"""Import a published zoo as a metazoo zoo directory: INRs (DWSNets or NFN layout) or CNN
classifiers (the Small CNN Zoo, Wild-Park-style checkpoints).

Not a DVC stage of the default pipeline (the files need a download). After ``python -m
stages.import_zoo --format dwsnets --src <dir> --out data/zoo_dwsnets`` the ``graphs`` stage reads
it like a zoo we fitted (``python -m stages.graphs --zoo data/zoo_dwsnets --out
data/graphs_dwsnets``); after ``--format wild_park --out data/cnn_wild/zoo``, ``python -m
stages.cnn_graphs --family heterogeneous --zoo data/cnn_wild/zoo --out data/cnn_wild/graphs``
(``small_cnn_zoo``: ``--family homogeneous``). Every file is loaded with
``torch.load(weights_only=True)`` (or NumPy without pickles); a net with a non-finite parameter, a
label that is not an integer in 0..9, a test accuracy outside [0, 1], a file listed twice (in two
splits: test leakage), a file or ``splits.json`` entry that resolves outside ``--src``, or an
``--out`` that holds something other than an earlier import is refused with a message naming the
file. The zoo is written as one generation: an earlier import there is replaced whole.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import configure_logging
from pipeline.io import CorruptFileError, FolderBusy, folder_lock
from pipeline.zoo.published import INR_FORMATS, import_inr_zoo
from pipeline.zoo.published_cnn import CNN_FORMATS, import_cnn_zoo

log = logging.getLogger("stages.import_zoo")  # its name also when run as ``python -m``


def run(fmt: str, src: Path, out: Path, val_fraction: float, seed: int, omega0=None, test_fraction=0.2) -> dict:
    """Import ``src`` in format ``fmt`` into ``out``; return the zoo's summary."""
    if fmt in CNN_FORMATS:
        summary = import_cnn_zoo(fmt, src, out, val_fraction, test_fraction, seed)
    else:
        summary = import_inr_zoo(fmt, src, out, val_fraction, seed, omega0)
    log.info("import_zoo: %d %s -> %s (splits %s)", summary["n_nets"], summary.pop("what"), out, summary["counts"])
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", required=True, choices=sorted(INR_FORMATS | CNN_FORMATS))
    ap.add_argument("--src", required=True, type=Path, help="the downloaded data set's directory")
    ap.add_argument("--out", required=True, type=Path, help="zoo directory to write")
    ap.add_argument("--val-fraction", type=float, default=1 / 12, help="of the training nets, if no validation split")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="of the CNN runs (the CNN zoos have no split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omega0", type=float, default=None, help="SIREN frequency (default: the format's, 30)")
    args = ap.parse_args(argv)
    configure_logging()
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')}: {getattr(args, key)} is out of range (allowed: [0, 1))")
    if args.val_fraction + args.test_fraction >= 1 and args.format in CNN_FORMATS:
        ap.error("--val-fraction + --test-fraction must leave runs to train on (their sum is below 1)")
    if not args.src.is_dir():
        ap.error(f"--src: {args.src} is not a directory")
    try:
        with folder_lock(args.out):
            run(args.format, args.src, args.out, args.val_fraction, args.seed, args.omega0, args.test_fraction)
    except (CorruptFileError, FolderBusy) as e:
        raise SystemExit(f"import_zoo: {e}") from e


if __name__ == "__main__":
    main()
