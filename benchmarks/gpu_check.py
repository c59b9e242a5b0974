"""GPU check: zoo fitting and metanetwork training on CUDA against the CPU, in one run.

On each device: fit 1 000 and 10 000 SIRENs (2 -> 32 -> 32 -> 1 on offline MNIST digits,
``--steps`` Adam steps, no early stop) and 1 000 KAN-INRs (2 -> 8 -> 8 -> 1), then train one
epoch of NG-GNN, NG-T and DWSNet at the paper profile's sizes (``profiles/paper.yaml``) on
neural graphs of the fitted SIRENs. Prints INRs/s, graphs/s and the GPU / CPU ratio of each.
On the GPU every net of a size is one batch; on the CPU the zoo's chunked path (and the fused KAN
kernel) runs with every core. ``--cpu-fraction`` fits / trains a fraction of the nets / graphs on
the CPU (rates are per second, so they stay comparable) to keep the run short.

Targets on one H100-class GPU: >= 2 000 SIRENs/s; NG-GNN at width 64 >= 5 000 graphs/s.
Without CUDA it says so and exits 0 (``--devices cpu`` exercises every code path on the CPU).

Run: ``python benchmarks/gpu_check.py [--steps 100 --cpu-fraction 0.1]``.

``--quick`` settles the GPU numbers in about 5 minutes on one GPU and prints one table
(:func:`quick`): after a warm-up, SIREN fitting at two batch sizes, one training epoch of every
model of the paper profile's INR table at its widths, NG-GNN compiled (``train.compile``: CUDA
graphs) against eager, four Ray tasks sharing the GPU against one (each held to its share of the
memory, as pipeline tasks are),
the losses of the first training steps on the GPU against the CPU (docs/cluster.md's tolerance: a
relative 1e-4), and a sync check (the training loop's body under
``torch.cuda.set_sync_debug_mode("error")``). ``--quick --device cpu --tiny`` runs every part
at toy sizes with the default profile's models on the CPU (a smoke run of the script; no rate
it prints means anything).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from pipeline.config import load_params
from pipeline.data import load_images
from pipeline.device import cap_gpu_memory
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.models import build_model
from pipeline.train import (
    Classification,
    TrainSettings,
    compile_model,
    data_shape,
    fit_model,
    forward_spec_from_meta,
    model_inputs,
)
from pipeline.weightspace.normalize import apply_stats, fit_stats
from pipeline.weightspace.spec import ParamSpec
from pipeline.zoo.build import PlannedNet, fit_shard
from pipeline.zoo.kan import kan_spec
from pipeline.zoo.kan_zoo import InrFit, fit_kan_shard
from pipeline.zoo.siren import FitSettings, siren_spec

ROOT = Path(__file__).resolve().parents[1]
SIREN_TARGET, NG_GNN_TARGET = 2000.0, 5000.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_sirens_rate(images: torch.Tensor, labels: torch.Tensor, n: int, steps: int, device: torch.device):
    """INRs/s fitting ``n`` SIRENs, and their parameters (CPU) and labels."""
    idx = torch.arange(n) % images.shape[0]
    nets = [PlannedNet(i, int(idx[i]), int(labels[idx[i]]), "train", 1000 + i) for i in range(n)]
    spec = siren_spec([32, 32])
    settings = FitSettings(steps=steps, lr=5e-4, omega0=30.0, variant="standard", target_psnr=200.0)
    chunk = n if device.type == "cuda" else 16
    sync(device)
    t0 = time.perf_counter()
    params, _ = fit_shard(nets, images[idx], spec, settings, chunk, device)
    sync(device)
    return n / (time.perf_counter() - t0), params, labels[idx], spec


def fit_kans_rate(images: torch.Tensor, n: int, steps: int, device: torch.device) -> float:
    spec = kan_spec([2, 8, 8, 1], 5, 3)
    chunk = n if device.type == "cuda" else 16
    sync(device)
    t0 = time.perf_counter()
    fit_kan_shard("inr", list(range(n)), images[:n], spec, InrFit(steps, 2e-2), chunk, device)
    sync(device)
    return n / (time.perf_counter() - t0)


def epoch_rate(name: str, settings, train: GraphSet, held: GraphSet, meta: dict, batch: int, device) -> float:
    """Training graphs/s over one epoch of ``train`` (evaluation on the small ``held`` set not timed)."""
    torch.manual_seed(0)
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    shape = data_shape(train, template, 10, forward_spec_from_meta(meta))
    model = build_model(name, settings, shape)
    data, small = (model_inputs(g, template, model.input_kind) for g in (train, held))
    settings = TrainSettings(1, batch, 1e-3, 0.0, 10, 10.0)
    res = fit_model(model, data, small, small, settings, 0, Classification(10), device=device)
    return len(train) / res.seconds_per_epoch


def graphs_of(params: dict, labels: torch.Tensor, spec, n: int) -> tuple[GraphSet, GraphSet, dict]:
    """Normalized neural graphs of the first ``n`` nets, of 64 more for evaluation, and their meta."""
    template = graph_template(spec)
    stats = fit_stats({k: v[:n] for k, v in params.items()}, spec)

    def part(a: int, b: int) -> GraphSet:
        p = apply_stats({k: v[a:b] for k, v in params.items()}, spec, stats)
        return GraphSet.from_params(p, template, labels[a:b], torch.arange(a, b))

    forward = {"activation": "sin", "omega0": 30.0, "output_offset": 0.0}
    return part(0, n), part(n, n + 64), {"spec": spec.to_dict(), "norm_stats": stats, "forward": forward}


# ---- --quick -------------------------------------------------------------------------------

LOSS_RTOL = 1e-4  # docs/cluster.md, `device`: the stated tolerance of two runs with one seed


@dataclasses.dataclass(frozen=True)
class QuickSizes:
    siren_nets: tuple[int, int] = (1000, 10000)
    siren_steps: int = 100
    graphs: int = 4000  # training graphs of each model's epoch (from the fitted SIRENs)
    agree_steps: int = 5  # steps compared between the device and the CPU
    ray_tasks: int = 4
    profile: str = "profiles/paper.yaml"  # the models, their widths and the batch size


TINY = QuickSizes((16, 200), 3, 128, 2, 2, "params.yaml")


def _timed(device: torch.device, fn, *args):
    """``fn(*args)`` and its wall seconds, the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - t0


def _setup(name: str, settings, train: GraphSet, meta: dict, no_dropout: bool = False):
    """Model ``name`` (seed 0, on the CPU) and its inputs for ``train``."""
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    shape = data_shape(train, template, 10, forward_spec_from_meta(meta))
    if no_dropout and hasattr(settings, "dropout"):
        settings = dataclasses.replace(settings, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(name, settings, shape)
    return model, model_inputs(train, template, model.input_kind)


def loop_body(model, data, batch: int, device: torch.device, graphs: bool = False) -> Iterator[torch.Tensor]:
    """Training steps as :func:`pipeline.train.fit_model`'s loop body runs them
    (:func:`~pipeline.train.shuffled_batches`, :func:`~pipeline.train.train_step`, the schedule,
    the on-device loss and accuracy sums), one epoch; yields each step's loss on the device.
    ``graphs``: the model is compiled with CUDA graphs (each step marked, as the loop does)."""
    from pipeline.train import make_adamw, shuffled_batches, train_step, warmup_schedule

    model.to(device).train()
    data = data.to(device)
    opt = make_adamw(model, 1e-3, 5e-4, device)
    sched = warmup_schedule(TrainSettings(1, batch, 1e-3, 5e-4, 10, 10.0))(opt)
    tot, correct = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), device=device)
    for inputs, y in shuffled_batches(data, batch, torch.Generator().manual_seed(0)):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out, loss = train_step(model, inputs, y, Classification(10), opt, 10.0)
        sched.step()
        tot += loss.double() * y.shape[0]
        correct += (out.argmax(1) == y).sum()
        yield loss


def loop_body_steps(model, data, batch: int, steps: int, device: torch.device, graphs: bool = False) -> torch.Tensor:
    """The losses ``(steps,)`` of the first ``steps`` steps of :func:`loop_body` (cloned: a CUDA
    graph's outputs are overwritten by its next replay)."""
    return torch.stack(
        [loss.clone() for loss in itertools.islice(loop_body(model, data, batch, device, graphs), steps)]
    )


def sync_check(model, data, batch: int, device: torch.device) -> str:
    """``"none"`` if three steps in the middle of an epoch (after its start, which moves the
    epoch's order to the GPU once, and the optimizer's first step) never wait for the GPU, else
    the first synchronizing call; ``"not checked"`` off CUDA."""
    if device.type != "cuda":
        return "not checked (CPU)"
    steps = loop_body(model, data, batch, device)
    next(steps)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            next(steps)
        return "none"
    except RuntimeError as e:
        return "SYNC: " + str(e).splitlines()[0][:80]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def ray_shared_rate(
    name: str, settings, train: GraphSet, meta: dict, batch: int, tasks: int, device
) -> tuple[float, float, bool]:
    """Graphs/s of ``tasks`` Ray tasks each training one epoch of ``name`` on a ``1 / tasks``
    share of the device (the paper profile's ``gpus_per_task``), all at once; with the largest
    peak memory of a task (GiB) and whether every task was held to its share of the memory."""
    import ray

    gpus = 1 if device.type == "cuda" else 0
    ray.init(address="local", num_cpus=tasks, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_gpus=gpus / tasks, num_cpus=1)
        def one_epoch(train: GraphSet) -> tuple[float, float, bool]:
            torch.set_num_threads(1)
            capped = cap_gpu_memory(gpus / tasks)  # as every pipeline task holding a GPU fraction
            model, data = _setup(name, settings, train, meta)
            _, seconds = _timed(device, loop_body_steps, model, data, batch, len(train) // batch, device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            return seconds, peak, capped

        ref = ray.put(train)
        ray.get(one_epoch.remote(ref))  # warm-up: workers start, kernels load
        t0 = time.perf_counter()
        done = ray.get([one_epoch.remote(ref) for _ in range(tasks)])
        rate = tasks * (len(train) // batch) * batch / (time.perf_counter() - t0)
        return rate, max(d[1] for d in done), all(d[2] for d in done)
    finally:
        ray.shutdown()


def quick(device: torch.device, sizes: QuickSizes) -> list[tuple[str, str, str]]:
    """Every measurement of ``--quick`` as ``(what, value, note)`` rows."""
    paper = load_params(ROOT / sizes.profile).train
    batch = paper.batch_size
    images, labels = load_images("mnist_offline")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    rows = [("device", name, f"torch {torch.__version__}, CUDA {torch.version.cuda or '-'}")]
    fit_sirens_rate(images, labels, sizes.siren_nets[0], 2, device)  # warm-up: kernels, allocator
    params = labels_all = spec = None
    for n in sizes.siren_nets:
        rate, params, labels_all, spec = fit_sirens_rate(images, labels, n, sizes.siren_steps, device)
        rows.append((f"SIREN fitting, {n} nets in one batch", f"{rate:,.0f} INRs/s", f"{sizes.siren_steps} Adam steps"))
    n_graphs = min(sizes.graphs, params[next(iter(params))].shape[0] - 64)
    train, _, meta = graphs_of(params, labels_all, spec, n_graphs)
    for model_name in paper.models:
        base = model_name.split("@")[0].removesuffix("_perm")
        settings = paper.settings(model_name)
        model, data = _setup(base, settings, train, meta)
        steps = len(train) // batch
        loop_body_steps(model, data, batch, 2, device)  # warm-up
        _, seconds = _timed(device, loop_body_steps, model, data, batch, steps, device)
        rate = steps * batch / seconds
        ref, _ = _setup(base, settings, train, meta, no_dropout=True)
        here, _ = _setup(base, settings, train, meta, no_dropout=True)
        a = loop_body_steps(ref, data, batch, sizes.agree_steps, torch.device("cpu")).double()
        b = loop_body_steps(here, data, batch, sizes.agree_steps, device).double().cpu()
        rel = float(((a - b).abs() / a.abs().clamp_min(1e-12)).max())
        agree = f"{rel:.1e} ({'within' if rel <= LOSS_RTOL else 'OUTSIDE'} {LOSS_RTOL:g})"
        syncs = sync_check(model, data, batch, device)
        rows.append(
            (
                f"{model_name} one epoch ({_width(settings)}), batch {batch}",
                f"{rate:,.0f} graphs/s",
                f"loss vs CPU, {sizes.agree_steps} steps: {agree}; host syncs: {syncs}",
            )
        )
    ng = paper.settings("ng_gnn")
    one = next(float(r[1].split()[0].replace(",", "")) for r in rows if r[0].startswith("ng_gnn one epoch"))
    model, data = _setup("ng_gnn", ng, train, meta)
    t0 = time.perf_counter()
    graphs = compile_model(model, device, static_shapes=True)
    loop_body_steps(model, data, batch, 3, device, graphs)  # compiles (and records the CUDA graphs)
    compile_s = time.perf_counter() - t0
    steps = len(train) // batch
    _, seconds = _timed(device, loop_body_steps, model, data, batch, steps, device, graphs)
    ref, _ = _setup("ng_gnn", ng, train, meta, no_dropout=True)
    here, _ = _setup("ng_gnn", ng, train, meta, no_dropout=True)
    compile_model(here, device, static_shapes=True)
    a = loop_body_steps(ref, data, batch, sizes.agree_steps, device).double().cpu()
    b = loop_body_steps(here, data, batch, sizes.agree_steps, device, graphs).double().cpu()
    rel = float(((a - b).abs() / a.abs().clamp_min(1e-12)).max())
    rows.append(
        (
            f"ng_gnn one epoch, train.compile ({'CUDA graphs' if graphs else 'inductor'})",
            f"{steps * batch / seconds:,.0f} graphs/s",
            f"{steps * batch / seconds / one:.2f}x eager; compiling {compile_s:.0f} s; loss vs eager: {rel:.1e}",
        )
    )
    shared, peak, capped = ray_shared_rate("ng_gnn", ng, train, meta, batch, sizes.ray_tasks, device)
    cap = f"each held to 1/{sizes.ray_tasks} of its memory" if capped else "no memory cap (not a GPU)"
    rows.append(
        (
            f"ng_gnn, {sizes.ray_tasks} Ray tasks sharing the device",
            f"{shared:,.0f} graphs/s",
            f"{shared / one:.2f}x one process ({one:,.0f} graphs/s); peak {peak:.2f} GiB per task, {cap}",
        )
    )
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    print("| measurement | value | note |")
    print("|---|---:|---|")
    for what, value, note in rows:
        print(f"| {what} | {value} | {note} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the 5-minute check (quick)")
    ap.add_argument("--device", default="cuda", help="with --quick: the device checked")
    ap.add_argument("--tiny", action="store_true", help="with --quick: toy sizes (a smoke run)")
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--steps", type=int, default=100, help="Adam steps per SIREN / KAN")
    ap.add_argument("--sizes", default="1000,10000", help="SIREN zoo sizes")
    ap.add_argument("--kans", type=int, default=1000)
    ap.add_argument("--graphs", type=int, default=4000, help="training graphs per epoch (the default zoo's 4 000)")
    ap.add_argument("--cpu-fraction", type=float, default=0.1)
    args = ap.parse_args()
    if args.quick:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("gpu_check --quick: no CUDA device on this machine; nothing is measured (exit 0)")
            return
        t0 = time.perf_counter()
        print_table(quick(device, TINY if args.tiny else QuickSizes()))
        print(f"\ngpu_check --quick: {time.perf_counter() - t0:.0f} s")
        return
    devices = [torch.device(d) for d in args.devices.split(",")]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; the GPU numbers are not measured (exit 0)")
        return
    paper = load_params(ROOT / "profiles" / "paper.yaml").train
    batch = paper.batch_size
    images, labels = load_images("mnist_offline")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, dict[str, float]] = {}
    for device in devices:
        frac = args.cpu_fraction if device.type == "cpu" else 1.0
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
        print(f"== {device} ({name})", flush=True)
        params = labels_all = spec = None
        for n in sizes:
            m = max(int(n * frac), 32)
            rate, p, y, spec = fit_sirens_rate(images, labels, m, args.steps, device)
            rows.setdefault(f"SIRENs/s, {n} nets", {})[device.type] = rate
            print(f"  {m} SIRENs x {args.steps} steps: {rate:.1f} INRs/s", flush=True)
            if params is None or p[next(iter(p))].shape[0] > params[next(iter(params))].shape[0]:
                params, labels_all = p, y
        m = max(int(args.kans * frac), 32)
        rate = fit_kans_rate(images, m, args.steps, device)
        rows.setdefault(f"KANs/s, {args.kans} nets", {})[device.type] = rate
        print(f"  {m} KAN-INRs x {args.steps} steps: {rate:.1f} INRs/s", flush=True)
        n_graphs = min(max(int(args.graphs * frac), batch), params[next(iter(params))].shape[0] - 64)
        train, held, meta = graphs_of(params, labels_all, spec, n_graphs)
        for model in ("ng_gnn", "ng_t", "dwsnet"):
            settings = paper.settings(model)
            rate = epoch_rate(model, settings, train, held, meta, batch, device)
            rows.setdefault(f"{model} graphs/s ({_width(settings)})", {})[device.type] = rate
            print(f"  {model} one epoch of {n_graphs} graphs, batch {batch}: {rate:.1f} graphs/s", flush=True)
    print()
    print(f"| measurement | {' | '.join(d.type for d in devices)} | ratio |")
    print(f"|---|{'---:|' * len(devices)}---:|")
    for key, by_dev in rows.items():
        vals = " | ".join(f"{by_dev[d.type]:.1f}" for d in devices)
        ratio = f"{by_dev['cuda'] / by_dev['cpu']:.1f}x" if {"cuda", "cpu"} <= set(by_dev) else "-"
        print(f"| {key} | {vals} | {ratio} |")
    if "cuda" in {d.type for d in devices}:
        siren = rows[f"SIRENs/s, {sizes[-1]} nets"]["cuda"]
        ng = next(v["cuda"] for k, v in rows.items() if k.startswith("ng_gnn"))
        print(f"target SIRENs/s >= {SIREN_TARGET:.0f}: {'met' if siren >= SIREN_TARGET else 'NOT met'} ({siren:.0f})")
        print(
            f"target NG-GNN graphs/s >= {NG_GNN_TARGET:.0f}: {'met' if ng >= NG_GNN_TARGET else 'NOT met'} ({ng:.0f})"
        )


def _width(settings) -> str:
    d = dataclasses.asdict(settings)
    return ", ".join(f"{k} {d[k]}" for k in ("hidden", "layers", "heads", "probe_features") if k in d)


if __name__ == "__main__":
    main()
