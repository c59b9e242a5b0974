"""Argument parsing shared by the stage entry points."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, Params, load_params


def parse(description: str, paths: dict[str, str], argv: list[str] | None = None) -> tuple[Params, argparse.Namespace]:
    """``--params`` plus one ``--<name>`` option per path; exits with the bad key on a config error."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, default in paths.items():
        ap.add_argument(f"--{name}", default=default)
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as e:
        print(f"error in {args.params}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    return params, args
