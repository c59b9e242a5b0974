"""SIREN zoo throughput: the batched trainer against a plain one-``nn.Module``-per-net loop.

Both fit the same offline MNIST digits from the same initial parameters with the same Adam
steps and learning rate (no early stop), in this process, with the same torch thread count.
Also reports the batched trainer's matrix-product FLOP/s as a fraction of a matmul peak
measured in the same run. Run: ``python benchmarks/zoo_throughput.py [--nets 64 --loop-nets 16]``.
The last line is ``ratio: N.NN`` (batched INRs/s over loop INRs/s).
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import matmul_peak
from torch import nn

from pipeline.data import coordinate_grid, load_images, psnr_from_mse
from pipeline.weightspace.spec import unflatten
from pipeline.zoo.build import PlannedNet, fit_shard
from pipeline.zoo.siren import FitSettings, init_sirens, siren_spec


class Sine(nn.Module):
    def __init__(self, omega0: float):
        super().__init__()
        self.omega0 = omega0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega0 * x)


def loop_fit(images: torch.Tensor, seeds: list[int], hidden: list[int], s: FitSettings) -> torch.Tensor:
    """The baseline: one ``nn.Sequential`` and one ``torch.optim.Adam`` per net, one net at a time."""
    spec = siren_spec(hidden)
    coords = coordinate_grid(images.shape[1], images.shape[2])
    init = unflatten(init_sirens(spec, seeds, s.omega0, s.variant), spec)
    psnrs = []
    for k in range(images.shape[0]):
        sizes = spec.layer_sizes
        layers: list[nn.Module] = []
        for l in range(len(sizes) - 1):
            lin = nn.Linear(sizes[l], sizes[l + 1])
            with torch.no_grad():
                lin.weight.copy_(init[f"layers.{l}.weight"][k])
                lin.bias.copy_(init[f"layers.{l}.bias"][k])
            layers.append(lin)
            if l < len(sizes) - 2:
                layers.append(Sine(s.omega0))
        net = nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=s.lr)
        target = images[k].reshape(-1, 1)
        for _ in range(s.steps):
            loss = nn.functional.mse_loss(net(coords), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            psnrs.append(psnr_from_mse(nn.functional.mse_loss(net(coords), target)))
    return torch.stack(psnrs)


def siren_step_flops(sizes: tuple[int, ...], n_pix: int) -> float:
    """Matrix-product FLOPs of one forward + backward step of one SIREN (weights' gradients included)."""
    fwd = sum(2 * n_pix * sizes[l] * sizes[l + 1] for l in range(len(sizes) - 1))
    return 3 * fwd  # forward, input gradients, weight gradients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nets", type=int, default=64, help="INRs fitted by the batched trainer")
    ap.add_argument("--loop-nets", type=int, default=16, help="INRs fitted by the loop (first of --nets)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--chunk", type=int, default=16)
    args = ap.parse_args()

    images, labels = load_images("mnist_offline")
    images = images[: args.nets]
    seeds = list(range(args.nets))
    hidden = [32, 32]
    spec = siren_spec(hidden)
    s = FitSettings(steps=args.steps, lr=args.lr, omega0=30.0, variant="standard", target_psnr=float("inf"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SIREN 2-32-32-1, {args.steps} Adam steps")

    peak = matmul_peak()
    nets = [PlannedNet(i, i, int(labels[i]), "train", seeds[i]) for i in range(args.nets)]
    t = time.perf_counter()
    _, extras = fit_shard(nets, images, spec, s, args.chunk)
    batched_s = time.perf_counter() - t
    batched_rate = args.nets / batched_s

    t = time.perf_counter()
    loop_psnr = loop_fit(images[: args.loop_nets], seeds[: args.loop_nets], hidden, s)
    loop_s = time.perf_counter() - t
    loop_rate = args.loop_nets / loop_s

    common = extras["psnr"][: args.loop_nets]
    flops = siren_step_flops(spec.layer_sizes, images.shape[1] * images.shape[2]) * args.steps * args.nets
    achieved = flops / batched_s
    print(f"matmul peak (1024^3 sgemm):  {peak / 1e9:8.1f} GFLOP/s")
    print(
        f"batched trainer: {args.nets:4d} INRs in {batched_s:7.2f} s = {batched_rate:7.2f} INRs/s, "
        f"mean PSNR {float(extras['psnr'].mean()):.2f} dB"
    )
    print(
        f"nn.Module loop:  {args.loop_nets:4d} INRs in {loop_s:7.2f} s = {loop_rate:7.2f} INRs/s, "
        f"mean PSNR {float(loop_psnr.mean()):.2f} dB"
    )
    diff = float((common - loop_psnr).abs().max())
    print(
        f"PSNR on the same {args.loop_nets} INRs: batched {float(common.mean()):.2f} dB, loop "
        f"{float(loop_psnr.mean()):.2f} dB, max |diff| {diff:.3f} dB ({'agree' if diff <= 0.5 else 'DISAGREE'})"
    )
    print(
        f"batched matmul throughput: {achieved / 1e9:.2f} GFLOP/s = {100 * achieved / peak:.1f} % of peak "
        f"(sin/cos and elementwise work are not counted)"
    )
    print(f"ratio: {batched_rate / loop_rate:.2f}")


if __name__ == "__main__":
    main()
