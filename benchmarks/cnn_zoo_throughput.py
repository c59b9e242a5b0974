"""CNN zoo throughput: the batched CNN trainer against one ``nn.Module`` and ``torch.optim.Adam``
per net, one net at a time.

Both train the Small CNN Zoo's architecture (3 convs of 16 channels, 3x3, stride 2, ReLU, global
average pooling, a linear head) on the offline MNIST digits pooled to 14x14, as the CNN zoo does,
with the same hyper-parameters for every net (so that both sides run the same number of steps),
from the same initial parameters (``init_cnns`` on the same seeds) on the same mini-batches (each
net's own generator, drawn in the same order), in this process with the same torch thread count.
Ours is ``pipeline.zoo.cnn_zoo.train_cnns`` on chunks of ``--chunk`` nets (one grouped
convolution per layer, Adam on one flat buffer); the baseline is a plain ``nn.Module`` per net
with ``torch.optim.Adam`` (the same L2 weight decay). Both are timed end to end, ours with its
checkpoint snapshots and test evaluation. Equal work is checked on the final training loss of
every net on the same 1 000 training digits: the means must agree within 2 %.

Run: ``python benchmarks/cnn_zoo_throughput.py [--n-ours 64 --n-loop 16 --steps 200 --threads 2]``.
The last line is ``ratio (batched / one net at a time): N.NN`` (CNNs/s over CNNs/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from timing import matmul_peak
from torch import nn

from pipeline.zoo.cnn import CNNArch, cnn_forward, init_cnns, small_cnn_zoo_arch
from pipeline.zoo.cnn_zoo import CNNRanges, draw_cnn_hyper, mnist_task, run_data, train_cnns

TARGET_RATIO = 5.0
AGREE_REL = 0.02


class OneCNN(nn.Module):
    """One CNN of a residual-free :class:`CNNArch` as a plain module."""

    def __init__(self, arch: CNNArch):
        super().__init__()
        sizes = arch.layer_sizes
        self.conv = nn.ModuleList(
            nn.Conv2d(sizes[l], sizes[l + 1], k, s, k // 2)
            for l, (k, s) in enumerate(zip(arch.kernels, arch.strides, strict=True))
        )
        self.head = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.conv:
            x = torch.relu(conv(x))
        return self.head(x.mean(dim=(2, 3)))


def loop_train(arch: CNNArch, seeds: list[int], data: dict, ranges: CNNRanges, init: dict) -> list[OneCNN]:
    """The baseline: every net on its own, the same draws as :func:`train_cnns`."""
    nets = []
    for b, seed in enumerate(seeds):
        hyper = draw_cnn_hyper(seed, ranges)
        subset, labels = run_data(hyper, seed, data["y_train"], arch.n_classes)
        model = OneCNN(arch)
        model.load_state_dict({k: v[b] for k, v in init.items()})
        opt = torch.optim.Adam(model.parameters(), lr=hyper["lr"], weight_decay=hyper["weight_decay"])
        g = torch.Generator().manual_seed(int(seed) + 3)
        for _ in range(int(hyper["steps"])):
            idx = subset[torch.randint(len(subset), (ranges.batch_size,), generator=g)]
            torch.rand(ranges.batch_size, arch.channels[-1], generator=g)  # the dropout draw (rate 0 here)
            loss = nn.functional.cross_entropy(model(data["x_train"][idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets.append(model)
    return nets


@torch.no_grad()
def final_losses(models_logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return torch.stack([nn.functional.cross_entropy(logits, y) for logits in models_logits])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-ours", type=int, default=64)
    ap.add_argument("--n-loop", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arch = small_cnn_zoo_arch()
    data = mnist_task(0)
    # one setting for every net: both sides run the same steps (the zoo draws them per net)
    ranges = CNNRanges((3e-3, 3e-3), (1e-4, 1e-4), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (args.steps,))
    seeds = list(range(1, args.n_ours + 1))
    train_cnns(arch, seeds[:2], data, dataclasses.replace(ranges, steps=(2,)))  # warm-up, not timed
    t = time.perf_counter()
    snaps = []
    for start in range(0, len(seeds), args.chunk):
        s, _ = train_cnns(arch, seeds[start : start + args.chunk], data, ranges)
        snaps.append(s[-1])
    ours_s = time.perf_counter() - t
    final = {k: torch.cat([s[k] for s in snaps]) for k in snaps[0]}

    loop_seeds = seeds[: args.n_loop]
    init = init_cnns(arch, loop_seeds)
    t = time.perf_counter()
    loop_nets = loop_train(arch, loop_seeds, data, ranges, init)
    loop_s = time.perf_counter() - t

    x, y = data["x_train"][:1000], data["y_train"][:1000]
    ours_loss = final_losses(list(cnn_forward({k: v[: args.n_loop] for k, v in final.items()}, arch, x)), y)
    with torch.no_grad():
        loop_loss = final_losses([m(x) for m in loop_nets], y)
    rel = abs(float(ours_loss.mean()) - float(loop_loss.mean())) / float(loop_loss.mean())
    ours_rate, loop_rate = args.n_ours / ours_s, args.n_loop / loop_s
    print(f"threads {args.threads}; sgemm peak {matmul_peak() / 1e9:.0f} GFLOP/s")
    print(f"{arch.name}, {args.steps} Adam steps of batch {ranges.batch_size} per net, 14x14 MNIST digits")
    print(f"batched (chunks of {args.chunk}): {args.n_ours} CNNs in {ours_s:.1f} s = {ours_rate:.2f} CNNs/s")
    print(f"one nn.Module at a time:        {args.n_loop} CNNs in {loop_s:.1f} s = {loop_rate:.2f} CNNs/s")
    print(
        f"final training loss on 1000 digits, the same {args.n_loop} nets: batched {float(ours_loss.mean()):.4f}, "
        f"one at a time {float(loop_loss.mean()):.4f} (relative difference {rel:.2%}, allowed {AGREE_REL:.0%}; "
        f"largest single-net difference {float((ours_loss - loop_loss).abs().max()):.4f})"
    )
    print(f"target ratio {TARGET_RATIO:g}: {'met' if ours_rate / loop_rate >= TARGET_RATIO else 'NOT met'}")
    print(f"ratio (batched / one net at a time): {ours_rate / loop_rate:.2f}")
    if rel > AGREE_REL:
        raise SystemExit(f"the two trainers disagree on the final loss by {rel:.1%}")


if __name__ == "__main__":
    main()
