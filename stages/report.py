"""DVC stage ``report``: metrics.json, per-epoch CSVs, results.md and figures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from pipeline import report
from pipeline.config import Params, to_flat_dict
from pipeline.data import coordinate_grid
from pipeline.graphs.store import data_version
from pipeline.io import read_json, write_json, write_text
from pipeline.zoo.siren import output_offset, siren_forward
from pipeline.zoo.store import load_zoo
from stages.common import parse


def _render_examples(zoo_dir: Path, images: torch.Tensor) -> tuple:
    """The first test INR of every label, rendered on its image grid."""
    zoo = load_zoo(zoo_dir)
    params, recs = zoo.select("test")
    recipe = zoo.info["recipe"]["fit"]
    h, w = zoo.info["image_shape"]
    first: dict[int, int] = {}
    for i, r in enumerate(recs):
        first.setdefault(r.label, i)
    picked = [first[k] for k in sorted(first)]
    sub = {k: v[picked] for k, v in params.items()}
    with torch.no_grad():
        out = siren_forward(sub, zoo.spec, coordinate_grid(h, w), recipe["omega0"], output_offset(recipe["variant"]))
    renders = out.reshape(len(picked), h, w)
    idx = [recs[i].image_index for i in picked]
    return images[idx], renders, [recs[i].label for i in picked], [recs[i].psnr for i in picked]


KAN_TASKS = ("inr", "classifier", "inr_forward")


def _kan_section(kan_dir: Path, out: Path, n_seeds: int) -> tuple[str, dict]:
    """KAN tables, metrics and learning curves, if every KAN task has been trained."""
    if not all((kan_dir / t / "train" / "results.json").exists() for t in KAN_TASKS):
        return "", {}
    task_runs = {t: read_json(kan_dir / t / "train" / "results.json")["runs"] for t in KAN_TASKS}
    summaries = {t: report.summarize_metrics(runs) for t, runs in task_runs.items()}
    zoos, counts = {}, {}
    for t in ("inr", "classifier"):
        info = read_json(kan_dir / t / "zoo" / "zoo.json")
        sizes = "-".join(str(n) for n in info["spec"]["layer_sizes"])
        fit = info["recipe"]["spec"]["tensors"]
        n_coef, n_knots = fit[0]["shape"][-1], fit[3]["shape"][-1]
        k = n_knots - n_coef - 1
        zoos[t] = info["summary"] | {"spec": f"{sizes} (G={n_coef - k}, k={k})"}
    for t in ("inr", "classifier"):
        counts[t] = read_json(kan_dir / t / "graphs" / "meta.json")["counts"]
    counts["inr_forward"] = task_runs["inr_forward"][0]["counts"]  # KANs; the query points are drawn per step
    report.plot_kan_curves(task_runs, out / "figures" / "kan_learning_curves.png")
    reference = report.reference_summary(task_runs["inr_forward"])
    numbers = {
        f"kan_{t}": {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
        for t, summary in summaries.items()
    }
    numbers["kan_inr_forward_position_only_reference"] = reference
    md = report.kan_markdown(summaries, zoos, counts, n_seeds, reference)
    md += "".join(
        f"\n### Claims: {report.KAN_TASK_TITLES[t]}\n\n" + report.task_claims(f"kan_{t}", task_runs[t])
        for t in ("inr", "classifier")
    )
    return md, numbers


CNN_FAMILIES = ("homogeneous", "heterogeneous")


def _cnn_section(cnn_dir: Path, out: Path, n_seeds: int) -> tuple[str, dict]:
    """The generalization section (CNN accuracy prediction), if every CNN family has been trained."""
    if not all((cnn_dir / f / "train" / "results.json").exists() for f in CNN_FAMILIES):
        return "", {}
    family_runs = {f: read_json(cnn_dir / f / "train" / "results.json")["runs"] for f in CNN_FAMILIES}
    summaries = {f: report.summarize_cnn(runs) for f, runs in family_runs.items()}
    zoos = {f: read_json(cnn_dir / f / "zoo" / "zoo.json")["summary"] for f in CNN_FAMILIES}
    counts = {f: read_json(cnn_dir / f / "graphs" / "meta.json")["counts"] for f in CNN_FAMILIES}
    report.plot_cnn_scatter(family_runs, out / "figures" / "cnn_scatter.png")
    numbers = {
        f"cnn_{f}": {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
        for f, summary in summaries.items()
    }
    return report.cnn_markdown(summaries, zoos, counts, n_seeds, family_runs), numbers


def _edit_section(edit_dir: Path, out: Path) -> tuple[str, dict]:
    """The editing table, metrics and example figure, if the ``edit`` stage has run."""
    if not (edit_dir / "results.json").exists():
        return "", {}
    runs = read_json(edit_dir / "results.json")["runs"]
    summary = report.summarize_editing(runs)
    reference = report.reference_summary(runs)
    first_seed = min(r["seed"] for r in runs)
    examples = {
        s["label"]: next(r for r in runs if r["model"] == m and r["seed"] == first_seed)["examples"]
        for m, s in summary.items()
    }
    report.plot_editing_examples(examples, out / "figures" / "editing_examples.png")
    r0 = runs[0]
    md = report.editing_markdown(
        summary, reference, r0["n_train"], r0["n_test"], len({r["seed"] for r in runs}), len(r0["history"])
    )
    md += report.task_claims("inr_editing", runs)
    numbers = {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
    return md, {"inr_editing": numbers, "inr_editing_no_edit_reference": reference}


def _adapt_section(adapt_dir: Path, out: Path) -> tuple[str, dict]:
    """The domain-adaptation table, metrics and figure, if the ``adapt`` stage has run."""
    if not (adapt_dir / "train" / "results.json").exists():
        return "", {}
    runs = read_json(adapt_dir / "train" / "results.json")["runs"]
    summary = report.summarize_adaptation(runs)
    info = read_json(adapt_dir / "zoo" / "zoo.json")
    zoo = info["summary"] | {"novel_pairs": info["novel_pairs"]}
    report.plot_adaptation(summary, zoo, out / "figures" / "adaptation.png")
    counts = read_json(adapt_dir / "graphs" / "meta.json")["counts"]  # the nets trained on (finite ones)
    n_seeds = len({r["seed"] for r in runs})
    claims = report.adaptation_claims(runs)
    md = report.adaptation_markdown(summary, zoo, counts, info["recipe"]["corruption"], n_seeds, claims)
    numbers = {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
    return md, {"domain_adaptation": numbers, "domain_adaptation_baselines": info["summary"]}


def _l2o_section(l2o_dir: Path, out: Path) -> tuple[str, dict]:
    """The learning-to-optimize table, metrics and figure, if the ``l2o`` stage has run."""
    if not (l2o_dir / "results.json").exists():
        return "", {}
    runs = read_json(l2o_dir / "results.json")["runs"]
    summary = report.summarize_l2o(runs)
    report.plot_l2o(runs, out / "figures" / "l2o_curves.png")
    md = report.l2o_markdown(summary, runs[0]["tasks"], runs[0]["settings"], report.l2o_claims(runs))
    numbers = {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
    return md, {"learning_to_optimize": numbers}


def run(
    params: Params,
    zoo_dir: Path,
    graphs_dir: Path,
    train_dir: Path,
    out: Path,
    kan_dir: Path,
    edit_dir: Path,
    regime_file: Path | None = None,
    reference_file: Path | None = None,
    cnn_dir: Path | None = None,
    adapt_dir: Path | None = None,
    l2o_dir: Path | None = None,
) -> dict:
    from pipeline import tracking
    from pipeline.data import load_images

    results = read_json(train_dir / "results.json")
    runs = results["runs"]
    summary = report.summarize(runs)
    numbers = {m: {k: v for k, v in s.items() if not isinstance(v, str)} for m, s in summary.items()}
    kan_md, kan_numbers = _kan_section(kan_dir, out, len(params.kan.train.seeds))
    edit_md, edit_numbers = _edit_section(edit_dir, out)
    cnn_md, cnn_numbers = _cnn_section(cnn_dir, out, len(params.cnn.train.seeds)) if cnn_dir else ("", {})
    adapt_md, adapt_numbers = _adapt_section(adapt_dir, out) if adapt_dir else ("", {})
    l2o_md, l2o_numbers = _l2o_section(l2o_dir, out) if l2o_dir else ("", {})
    sections = edit_numbers | kan_numbers | cnn_numbers | adapt_numbers | l2o_numbers
    write_json(out / "metrics.json", {"inr_classification": numbers} | sections)
    for model in summary:
        rows = report.curves(runs, model)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(out / "curves" / f"{model}.csv", buf.getvalue())
    zoo_info = read_json(zoo_dir / "zoo.json")
    graph_meta = read_json(graphs_dir / "meta.json")
    report.plot_learning_curves(runs, out / "figures" / "learning_curves.png")
    images, _ = load_images(params.data.source)
    report.plot_reconstructions(*_render_examples(zoo_dir, images), out / "figures" / "reconstructions.png")
    md = report.results_markdown(
        summary, zoo_info["summary"], graph_meta["counts"], params.profile, len(params.train.seeds)
    )
    md += report.task_claims("inr_classification", runs)
    if reference_file is not None and reference_file.exists():
        version = data_version(graph_meta)  # what every run of these graphs records
        table = reference_file.with_suffix(".md").read_text(encoding="utf-8")
        md += "\n" + report.reference_markdown(read_json(reference_file), table, version)
    if regime_file is not None and regime_file.exists():
        default = {"init": params.zoo.init, "steps": params.zoo.steps, "lr": params.zoo.lr}
        md += "\n" + report.regime_markdown(read_json(regime_file), default)
    md += "\n" + edit_md if edit_md else ""
    md += "\n" + kan_md if kan_md else ""
    md += "\n" + cnn_md if cnn_md else ""
    md += "\n" + adapt_md if adapt_md else ""
    md += "\n" + l2o_md if l2o_md else ""
    write_text(out / "results.md", md)
    with tracking.stage_run(params.mlflow, "report", to_flat_dict(params), {"data_version": results["data_version"]}):
        for model, s in summary.items():
            key = tracking.mlflow_key(model)
            tracking.log_metrics(
                params.mlflow, {f"{key}.test_acc_mean": s["test_acc_mean"], f"{key}.test_acc_std": s["test_acc_std"]}
            )
        for name in ("results.md", "metrics.json", "figures/learning_curves.png", "figures/reconstructions.png"):
            tracking.log_artifact(params.mlflow, str(out / name))
        if kan_md:
            tracking.log_artifact(params.mlflow, str(out / "figures" / "kan_learning_curves.png"))
        if edit_md:
            tracking.log_artifact(params.mlflow, str(out / "figures" / "editing_examples.png"))
        if cnn_md:
            tracking.log_artifact(params.mlflow, str(out / "figures" / "cnn_scatter.png"))
        if adapt_md:
            tracking.log_artifact(params.mlflow, str(out / "figures" / "adaptation.png"))
        if l2o_md:
            tracking.log_artifact(params.mlflow, str(out / "figures" / "l2o_curves.png"))
    print(md)
    return summary


def main(argv: list[str] | None = None) -> None:
    params, args = parse(
        __doc__,
        {
            "zoo": "data/zoo",
            "graphs": "data/graphs",
            "train": "data/train",
            "kan": "data/kan",
            "edit": "data/edit",
            "regime": "reports/zoo_regime/regime.json",
            "reference": "reports/reference/side_by_side.json",
            "cnn": "data/cnn",
            "adapt": "data/adapt",
            "l2o": "data/l2o",
            "out": "reports",
        },
        argv,
    )
    run(
        params,
        Path(args.zoo),
        Path(args.graphs),
        Path(args.train),
        Path(args.out),
        Path(args.kan),
        Path(args.edit),
        Path(args.regime),
        Path(args.reference),
        Path(args.cnn),
        Path(args.adapt),
        Path(args.l2o),
    )


if __name__ == "__main__":
    main()
