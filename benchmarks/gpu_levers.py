"""The throughput levers of a GPU cluster, each against its baseline measured in the same run.

1. **Object-store bytes of graph data** (any machine): what ``ray.put`` stores for every graph
   split under ``data/`` (the SIREN, CNN, adaptation and KAN zoos' graphs), measured with Ray's own serializer: each
   graph's structure stored once per graph (the baseline: the set's tensors as they are) against
   a :class:`~pipeline.graphs.store.GraphSet` as it pickles (a template's structure once).
2. **``train.compile``** (the device this runs on): training steps per second of the default
   profile's models (``params.yaml`` widths) at the training stage's batch, eager against
   ``torch.compile`` (:func:`pipeline.train.compile_model`; CUDA graphs on a GPU), after a
   warm-up; the compile time is printed apart. Needs ``data/graphs`` (``dvc repro graphs``).
3. **On CUDA only**: fused against per-tensor AdamW (:func:`pipeline.train.make_adamw`), and a
   host-drawn epoch order copied from pinned against pageable memory
   (:func:`pipeline.device.from_host`).

Run: ``python benchmarks/gpu_levers.py [--models mlp dwsnet ng_gnn ng_t] [--steps 30]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pipeline.config import load_params
from pipeline.device import from_host, resolve_device
from pipeline.graphs.neural_graph import graph_template
from pipeline.graphs.store import GraphSet
from pipeline.io import read_json
from pipeline.models import build_model
from pipeline.train import (
    Classification,
    compile_model,
    data_shape,
    forward_spec_from_meta,
    make_adamw,
    model_inputs,
    train_step,
)
from pipeline.weightspace.spec import ParamSpec


def object_store_bytes() -> None:
    """Ray's serialized size of every split of every graph directory present, both ways."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    size = ray._private.worker.global_worker.get_serialization_context().serialize
    print(f"{'graph split':>48}  {'graphs':>6}  {'per graph MiB':>13}  {'once MiB':>8}  ratio")
    for d in sorted(p.parent for p in Path("data").rglob("graphs/meta.json")):
        for split in ("train", "val", "test"):
            if not (path := d / f"{split}.safetensors").exists():
                continue
            gs = GraphSet.load(path)
            before, after = size(dict(gs.__dict__)).total_bytes, size(gs).total_bytes
            print(f"{str(path):>48}  {len(gs):6d}  {before / 2**20:13.2f}  {after / 2**20:8.2f}  {before / after:5.2f}")
    ray.shutdown()


def steps_per_second(model, data, objective, batch: int, steps: int, device: torch.device, graphs: bool) -> float:
    """Training steps (forward, loss, backward, clipping, AdamW) per second after 3 warm-up steps."""
    opt = make_adamw(model, 1e-3, 0.0, device)
    gen = torch.Generator().manual_seed(0)
    order = from_host(torch.randint(len(data), (steps + 3, batch), generator=gen), device)
    for k in range(steps + 3):
        if k == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        train_step(model, data.batch(order[k]), data.y[order[k]], objective, opt, 10.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def compile_speed(models: list[str], batch: int, steps: int, device: torch.device) -> None:
    gdir = Path("data/graphs")
    if not (gdir / "train.safetensors").exists():
        raise SystemExit("data/graphs/train.safetensors not found: run `dvc repro graphs` first")
    meta = read_json(gdir / "meta.json")
    template = graph_template(ParamSpec.from_dict(meta["spec"]))
    train = GraphSet.load(gdir / "train.safetensors")
    shape = data_shape(train, template, 10, forward_spec_from_meta(meta))
    tc = load_params(Path("params.yaml")).train
    objective = Classification(10)
    print(f"\ntrain.compile on {device} ({torch.get_num_threads()} threads), batch {batch}, {steps} timed steps")
    print(f"{'model':>10}  {'eager steps/s':>13}  {'compiled':>8}  {'compile s':>9}  ratio")
    for name in models:
        rates, seconds = {}, 0.0
        for compiled in (False, True):
            torch.manual_seed(0)
            model = build_model(name, tc.settings(name), shape).to(device)
            data = model_inputs(train, template, model.input_kind).to(device)
            graphs = False
            if compiled:
                t = time.perf_counter()
                graphs = compile_model(model, device, static_shapes=True)
                steps_per_second(model, data, objective, batch, 1, device, graphs)  # compiles
                seconds = time.perf_counter() - t
            rates[compiled] = steps_per_second(model, data, objective, batch, steps, device, graphs)
        print(
            f"{name:>10}  {rates[False]:13.2f}  {rates[True]:8.2f}  {seconds:9.1f}  {rates[True] / rates[False]:5.2f}"
        )


def cuda_only(device: torch.device) -> None:
    """Fused against per-tensor AdamW on 80 small tensors (a width-64 metanetwork's scale); pinned
    against pageable host-to-device copies."""
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(40)]).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    print("\nCUDA levers")
    for fused in (False, True):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
        for _ in range(5):
            opt.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            opt.step()
        torch.cuda.synchronize()
        us = (time.perf_counter() - t) / 200 * 1e6
        print(f"  AdamW over 80 tensors, {'fused' if fused else 'per tensor'}: {us:.0f} us/step")
    order = torch.randperm(4_000_000)
    for pinned in (False, True):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            (from_host(order, device) if pinned else order.to(device)).sum()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) / 20 * 1e3
        print(f"  a 4M-index epoch order to the GPU, {'pinned' if pinned else 'pageable'}: {ms:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["mlp", "dwsnet", "ng_gnn", "ng_t"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    object_store_bytes()
    compile_speed(args.models, args.batch, args.steps, device)
    if device.type == "cuda":
        cuda_only(device)


if __name__ == "__main__":
    main()
