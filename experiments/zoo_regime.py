"""Zoo regime study: which SIREN zoo recipe lets weight-only metanetworks learn.

For every recipe (init variant, Adam steps, learning rate) it runs the pipeline's own stages,
``zoo`` -> ``graphs`` -> ``train``, on a smaller split of the offline MNIST digits, each recipe
in ``<work>/<recipe>/`` (resumable: a re-run keeps finished shards and runs). It then measures
the fitted zoo's regime (:func:`pipeline.zoo.regime.zoo_regime`: per-tensor movement from the
initial values and per-layer standard deviations, beside the published DWSNets zoo's) and
collects the test accuracy, at the best validation epoch, of the weight-only models (NG-GNN
and NG-T without probe features). Writes ``<out>/regime.json`` and ``<out>/regime.md``.

Run: ``python experiments/zoo_regime.py`` (4 recipes, 3 000 INRs each, 5 models, 1 seed, 8
epochs: about 45 minutes on 2 cores). ``--recipes standard dwsnets`` picks recipes by name;
``--set train.dwsnet.norm=batch --tag bn`` trains again on the same zoos with changed settings
(YAML values; into ``<recipe>/train_<tag>/``) and writes ``regime_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.io import read_json, write_json
from pipeline.report.regime import regime_table
from pipeline.tasks.registry import entry_args
from pipeline.zoo.regime import layer_names, zoo_regime
from pipeline.zoo.store import load_zoo

# name -> zoo overrides; the first is the default profile's recipe
RECIPES: dict[str, dict] = {
    "standard": {"init": "standard", "steps": 300, "lr": 5.0e-4},
    "dwsnets": {"init": "dwsnets", "steps": 300, "lr": 5.0e-4},
    "dwsnets_lr1e-3": {"init": "dwsnets", "steps": 300, "lr": 1.0e-3},
    "dwsnets_600_lr1e-3": {"init": "dwsnets", "steps": 600, "lr": 1.0e-3},
}
PUBLISHED_STD = {"W0": 0.063, "b0": 0.021, "b1": 0.011}  # the published DWSNets MNIST zoo (issue 13)
STATS = ("W0", "b0", "W1", "b1", "W2")


def recipe_params(
    base: dict, zoo: dict, sizes: tuple[int, int, int], models: list[str], epochs: int, changes: list[str]
) -> dict:
    """The default params with one recipe's zoo, a smaller split, the weight-only models and
    ``changes`` (``dotted.key=yaml value``) applied last."""
    p = yaml.safe_load(yaml.safe_dump(base))
    p["data"] |= dict(zip(("n_train", "n_val", "n_test"), sizes, strict=True))
    p["zoo"] |= zoo
    p["train"] |= {"models": models, "seeds": [0], "epochs": epochs}
    for model in ("ng_gnn", "ng_t"):
        p["train"][model]["probe_features"] = 0  # weights only
    p["mlflow"]["experiment"] = "zoo_regime"
    for change in changes:
        key, _, value = change.partition("=")
        *path, last = key.split(".")
        node = p
        for k in path:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    return p


def run_recipe(work: Path, params: dict, train_dir: str) -> None:
    """``zoo`` -> ``graphs`` -> ``<train_dir>`` in ``work`` with the pipeline's stage entry points."""
    work.mkdir(parents=True, exist_ok=True)
    pf = work / f"params_{train_dir}.yaml"
    pf.write_text(yaml.safe_dump(params, sort_keys=False))
    steps = [
        ["zoo", "--params", str(pf), "--out", str(work / "zoo")],
        ["graphs", "--params", str(pf), "--zoo", str(work / "zoo"), "--out", str(work / "graphs")],
        ["train", "--params", str(pf), "--graphs", str(work / "graphs"), "--out", str(work / train_dir)],
    ]
    for stage, *args in steps:
        subprocess.run([sys.executable, "-m", *entry_args(stage), *args], check=True)


def measure(work: Path, train_dir: str) -> dict:
    """Regime of the recipe's training INRs and test accuracy per model."""
    zoo = load_zoo(work / "zoo")
    regime = zoo_regime(zoo, "train")
    names = layer_names(zoo.spec)
    regime["tensors"] = {names[k]: v for k, v in regime["tensors"].items()}
    runs = read_json(work / train_dir / "results.json")["runs"]
    regime["test_acc"] = {r["model"]: r["test"]["acc"] for r in runs}
    regime["configs"] = {r["model"]: r["config"] for r in runs}
    return regime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--models", nargs="+", default=["mlp", "statnn", "dwsnet", "nfn", "ng_gnn"])
    ap.add_argument("--sizes", nargs=3, type=int, default=[2000, 500, 500], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params changes, e.g. train.augment=none")
    ap.add_argument("--tag", default="", help="names the training runs and outputs of --set changes")
    ap.add_argument("--work", default="data/zoo_regime")
    ap.add_argument("--out", default="reports/zoo_regime")
    args = ap.parse_args()

    base = yaml.safe_load(Path(args.params).read_text())
    if bool(args.set) != bool(args.tag):
        ap.error("--set and --tag go together (the tag keeps the changed runs apart)")
    train_dir = f"train_{args.tag}" if args.tag else "train"
    rows = {}
    for name in args.recipes:
        t0 = time.time()
        work = Path(args.work) / name
        params = recipe_params(base, RECIPES[name], tuple(args.sizes), args.models, args.epochs, args.set)
        run_recipe(work, params, train_dir)
        rows[name] = measure(work, train_dir) | {"seconds": time.time() - t0}
        print(f"{name}: {rows[name]['test_acc']} ({rows[name]['seconds']:.0f} s)", flush=True)

    out = Path(args.out)
    setup = {"sizes": args.sizes, "epochs": args.epochs, "seeds": [0], "models": args.models, "changes": args.set}
    stem = f"regime_{args.tag}" if args.tag else "regime"
    record = {"setup": setup, "recipes": {n: RECIPES[n] for n in rows}, "results": rows}
    write_json(out / f"{stem}.json", record)
    text = (
        "# Zoo regime: recipe -> weight movement, reconstruction, weight-only accuracy\n\n"
        f"Made by `python experiments/zoo_regime.py` ({args.sizes[0]} / {args.sizes[1]} / {args.sizes[2]} "
        f"train / val / test INRs of the offline MNIST digits, {args.epochs} epochs, seed 0, params "
        f"`{args.params}`{' with ' + ', '.join(args.set) if args.set else ''}; NG-GNN without "
        "probe features). *moved*: median over training INRs of ||θ − θ₀|| / ||θ|| per tensor "
        "(0: left as initialized, 1: initial values gone); *std*: standard deviation of the fitted "
        "values; test accuracy (%) at the best validation epoch.\n\n"
    )
    text += regime_table(record, STATS, PUBLISHED_STD) + "\n"
    configs = next(iter(rows.values()))["configs"]
    text += "\nModel settings (each recipe alike):\n\n" + "".join(f"- `{m}`: `{configs[m]}`\n" for m in args.models)
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
