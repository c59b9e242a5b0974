"""Apply a trained metanetwork to the nets of a zoo: one CSV row per net.

    python -m stages.predict --run data/train/ng_t_seed0 --zoo data/zoo_other --out preds.csv

``--run`` is a run of ``train`` or ``kan_train`` (its ``.safetensors`` model file, its ``.json``
result or their common stem). The zoo must have the layout the model was trained on; its nets
are normalized with the training zoo's statistics stored in the model file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline import configure_logging
from pipeline.io import CorruptFileError
from pipeline.predict import predictions_table
from pipeline.saved import load
from pipeline.zoo.store import write_rows

log = logging.getLogger("stages.predict")  # its name also when run as ``python -m``


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run: data/train/<model>_seed<seed>[.safetensors]")
    ap.add_argument("--zoo", required=True, help="a zoo directory (zoo.json, manifest.csv, shards/)")
    ap.add_argument("--out", required=True, help="CSV file to write")
    args = ap.parse_args(argv)
    configure_logging()
    try:
        model = load(args.run)
        table = predictions_table(model, args.zoo)
    except (FileNotFoundError, CorruptFileError, ValueError) as e:
        print(f"predict: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    write_rows(Path(args.out), table)
    card = model.card
    log.info(
        "predict: %s (seed %s) on %d nets of %s -> %s", card["model"], card.get("seed"), len(table), args.zoo, args.out
    )


if __name__ == "__main__":
    main()
