"""The budget curve: how the INR table's weight-only models and the papers' orderings move as
training budget grows.

Trains MLP, StatNN, DWSNet, NFN, NG-GNN and NG-T on the default zoo's graphs (``data/graphs``,
from ``dvc repro``) with the default profile's training settings (``params.yaml: train``) at
several multiples of its epochs (the same batch size, so of its optimizer steps):

====================  ========  =====  =================================================
part                  budget    seeds  widths
====================  ========  =====  =================================================
``1x``                1×        3      default: the ``train`` stage's own runs (reused)
``4x``                4×        2      default (``params.yaml: train.<model>``)
``16x``               16×       1      default
``4x-published``      4×        1      published (``profiles/paper.yaml: train.<model>``)
====================  ========  =====  =================================================

Each part runs as Ray tasks through :func:`pipeline.runs.run_training` into
``data/budget/<part>/`` (tracked in MLflow as stage ``train@budget-<part>``): finished runs are kept,
and a killed run resumes after its last finished epoch. Every run keeps its per-item test
predictions, so each paper claim about these models is re-checked at every budget with a paired
bootstrap interval (:mod:`pipeline.claims`).

Writes ``reports/budget/budget_curve.{json,md,png}``: test accuracy per model and budget (mean ±
std over seeds) and, per claim, its verdict at each budget. Parts not run yet are reported as
such. Run (4x: about 45 CPU-minutes; 16x: about 100; the published widths: more)::

    python experiments/budget_curve.py                  # every part, then the report
    python experiments/budget_curve.py --parts 4x       # one part, then the report
    python experiments/budget_curve.py --parts          # only the report, from what has run
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline import configure_logging  # noqa: E402
from pipeline.claims import TASK_METRICS, check_claim, groups_from_runs  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.io import read_json, write_json, write_text  # noqa: E402
from pipeline.models import model_label, variant_key  # noqa: E402
from pipeline.report.common import published_results  # noqa: E402
from pipeline.runs import RESULTS, GraphData, run_training  # noqa: E402
from pipeline.tasks.prediction import PREDICTION  # noqa: E402
from pipeline.train import TrainSettings  # noqa: E402

MODELS = ("mlp", "statnn", "dwsnet", "nfn", "ng_gnn", "ng_t")  # the INR table's weight-only models
TASK = "inr_classification"


@dataclass(frozen=True)
class Part:
    factor: int  # epochs = factor x train.epochs
    seeds: tuple[int, ...]
    widths: str  # "default" (params.yaml) | "published" (profiles/paper.yaml)


PARTS = {
    "1x": Part(1, (0, 1, 2), "default"),
    "4x": Part(4, (0, 1), "default"),
    "16x": Part(16, (0,), "default"),
    "4x-published": Part(4, (0,), "published"),
}


def train_stage_runs(train_dir: Path, data: GraphData, epochs: int, seeds: tuple[int, ...]) -> list[dict] | None:
    """The ``train`` stage's runs of :data:`MODELS`, if they are the 1× part: the same graphs
    (data version), epochs and seeds; ``None`` otherwise."""
    path = train_dir / RESULTS
    if not path.exists():
        return None
    results = read_json(path)
    runs = [r for r in results["runs"] if r["model"] in MODELS and r["seed"] in seeds]
    same = results.get("data_version") == data.version and all(len(r["history"]) == epochs for r in runs)
    return runs if same and len(runs) == len(MODELS) * len(seeds) else None


def run_part(name: str, part: Part, params_file: str, paper_file: str, data: GraphData, train_dir: Path) -> dict:
    """Train every model of ``part`` (or reuse the ``train`` stage's runs for 1×); its record."""
    params = load_params(params_file)
    tc = params.train
    epochs = part.factor * tc.epochs
    t0 = time.time()
    runs = train_stage_runs(train_dir, data, epochs, part.seeds) if name == "1x" else None
    source = "the train stage (data/train)"
    if runs is None:
        widths = tc if part.widths == "default" else load_params(paper_file).train
        configs = {m: widths.settings(m) for m in MODELS}
        settings = TrainSettings(epochs, tc.batch_size, tc.lr, tc.weight_decay, tc.warmup_steps, tc.grad_clip)
        out = Path("data/budget") / name
        longest_first = sorted(MODELS, key=("ng_t", "ng_gnn", "dwsnet", "nfn", "statnn", "mlp").index)
        runs = run_training(
            params, data, out,
            stage=f"train@budget-{name}",  # the train stage's code (its code hash), its own runs
            kind=PREDICTION, models=longest_first, seeds=list(part.seeds), settings=settings, model_configs=configs,
            augment=tc.augment, threads=tc.threads_per_task,
        )  # fmt: skip
        source = str(out)
    return {
        **dataclasses.asdict(part),
        "epochs": epochs,
        "source": source,
        "wall_seconds": time.time() - t0,
        "runs": [{k: r[k] for k in KEPT if k in r} for r in runs],
    }


KEPT = ("model", "seed", "config", "test", "best_epoch", "n_params", "seconds_per_epoch", "test_predictions")
KEPT += ("test_targets",)


def _key(r: dict) -> str:
    return variant_key(r["model"], r["config"])


def _label(r: dict) -> str:
    return model_label(r["model"], r["config"])


def _pm(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.1f}" if xs else "–"


def _cell(v: dict) -> str:
    return f"{v['diff']:+.1f} [{v['lo']:+.1f}, {v['hi']:+.1f}] {v['verdict']}" if "diff" in v else v["verdict"]


def claims_by_part(parts: dict[str, dict], n_boot: int = 1000) -> list[dict]:
    """Every claim of ``claims.inr_classification`` between two of :data:`MODELS`, checked on each part."""
    rows = []
    for c in published_results()["claims"][TASK]:
        keys = {c["lower"], c["higher"]}
        if not keys <= set(MODELS) | {"nfn+np"}:
            continue
        row = {"lower": c["lower"], "higher": c["higher"], "ours": bool(c.get("ours")), "source": c["source"]}
        for name, rec in parts.items():
            groups = groups_from_runs(
                rec["runs"],
                lambda r: variant_key(r["model"], r["config"]),
                lambda r: model_label(r["model"], r["config"]),
            )
            chk = check_claim(c, groups, TASK, n_boot)
            row["text"] = chk.text
            iv = chk.interval
            row[name] = {"verdict": chk.verdict} | ({"diff": iv.diff, "lo": iv.lo, "hi": iv.hi} if iv else {})
        rows.append(row)
    return rows


def accuracy_table(parts: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """``{model: {part: [test accuracy % per seed]}}``."""
    table: dict[str, dict[str, list[float]]] = {m: {} for m in MODELS}
    for name, rec in parts.items():
        for r in rec["runs"]:
            table[r["model"]].setdefault(name, []).append(100 * r["test"]["acc"])
    return table


def markdown(record: dict) -> str:
    """The budget table (accuracy per model and part) and the claims' verdicts per part."""
    parts, table = record["parts"], record["accuracy"]
    names = [n for n in PARTS if n in parts]
    head = [
        f"{n} ({parts[n]['epochs']} epochs, {len(parts[n]['seeds'])} seed{'s' * (len(parts[n]['seeds']) > 1)})"
        for n in names
    ]
    lines = [
        "Test accuracy (%) at the best validation epoch, mean ± std over seeds, on graphs "
        f"`{record['data_version'][:12]}` (`experiments/budget_curve.py`). Widths: default (`params.yaml`) "
        "except `4x-published` (`profiles/paper.yaml`). Not run: "
        + (", ".join(n for n in PARTS if n not in parts) or "none")
        + ".",
        "",
        "| model | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for m, per in table.items():
        cells = [_pm(per.get(n, [])) for n in names]
        lines.append(f"| {record['labels'].get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "Claims (improvement in points [95 % interval], verdict):", ""]
    lines += ["| claim | " + " | ".join(names) + " | source |", "|---|" + "---|" * len(names) + "---|"]
    for c in record["claims"]:
        cells = [_cell(c[n]) for n in names]
        lines.append(f"| {c['text']}{' (ours)' if c['ours'] else ''} | " + " | ".join(cells) + f" | {c['source']} |")
    cost = {n: sum(r["seconds_per_epoch"] for r in parts[n]["runs"]) * parts[n]["epochs"] for n in names}
    times = ", ".join(f"{n} {c / 60:.0f} min" for n, c in cost.items())
    lines += ["", f"Training time per part, summed over its runs (one core each): {times}."]
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    """Test accuracy against budget (epochs), one line per model; the published-width points apart."""
    fig, ax = plt.subplots(figsize=(6, 4))
    parts = record["parts"]
    for m, per in record["accuracy"].items():
        xs = [(parts[n]["epochs"], statistics.fmean(v)) for n, v in per.items() if parts[n]["widths"] == "default"]
        if xs:
            xs.sort()
            line = ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", label=record["labels"].get(m, m))[0]
            pub = [(parts[n]["epochs"], statistics.fmean(v)) for n, v in per.items() if parts[n]["widths"] != "default"]
            if pub:
                ax.scatter(*zip(*pub, strict=True), marker="*", s=90, color=line.get_color())
    ax.set(xscale="log", xlabel="epochs (log; batch and schedule of params.yaml)", ylabel="test accuracy (%)")
    ax.set_title("INR classification vs budget (★: published widths)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS), help="parts to run (none: report)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--paper", default="profiles/paper.yaml", help="the published widths")
    ap.add_argument("--graphs", type=Path, default=Path("data/graphs"))
    ap.add_argument("--train", type=Path, default=Path("data/train"), help="the train stage's runs (the 1x part)")
    ap.add_argument("--out", type=Path, default=Path("reports/budget"))
    args = ap.parse_args()
    configure_logging()  # the stages' progress records
    data = GraphData.load(args.graphs)
    json_path = args.out / "budget_curve.json"
    record = read_json(json_path) if json_path.exists() else {}
    parts = record.get("parts", {}) if record.get("data_version") == data.version else {}
    for name in args.parts:
        parts[name] = run_part(name, PARTS[name], args.params, args.paper, data, args.train)
        record = {"data_version": data.version, "metric": TASK_METRICS[TASK].unit, "parts": parts}
        write_json(json_path, record)  # after every part: a later part that fails keeps this one
    parts = {n: parts[n] for n in PARTS if n in parts}
    labels = {r["model"]: _label(r) for rec in parts.values() for r in rec["runs"] if rec["widths"] == "default"}
    record = {"data_version": data.version, "parts": parts, "accuracy": accuracy_table(parts), "labels": labels}
    record["claims"] = claims_by_part(parts)
    write_json(json_path, record)
    write_text(args.out / "budget_curve.md", markdown(record))
    plot(record, args.out / "budget_curve.png")
    print(markdown(record))


if __name__ == "__main__":
    main()
