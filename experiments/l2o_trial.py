"""Trial of the learned optimizers (branch work, not a stage yet): meta-train on sklearn digits
(64 -> 32 -> 10), evaluate 200 steps on digits and on 14x14 MNIST (196 -> 64 -> 10), beside Adam.

Run: ``PYTHONPATH=. python experiments/l2o_trial.py {ff,ng_gnn,ng_t} OUTER_STEPS [META_LR] [skip-adam]``."""

import sys
import time

import torch

torch.set_num_threads(1)
from sklearn.datasets import load_digits
from torch.nn import functional as F

from pipeline.data import load_images
from pipeline.tasks.l2o import *
from pipeline.weightspace.spec import mlp_spec

d = load_digits()
x = torch.tensor(d.data, dtype=torch.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
y = torch.tensor(d.target)
g = torch.Generator().manual_seed(0)
p = torch.randperm(len(y), generator=g)
tr, te = p[:1300], p[1300:]
digits = Task(mlp_spec([64, 32, 10]), x[tr], y[tr], x[te], y[te], 64)
imgs, lab = load_images("mnist_offline")
xm = ((F.avg_pool2d(imgs.unsqueeze(1), 2).flatten(1)) - 0.13) / 0.31
pm = torch.randperm(5000, generator=g)
mnist = Task(mlp_spec([196, 64, 10]), xm[pm[:4000]], lab[pm[:4000]], xm[pm[4000:]], lab[pm[4000:]], 64)
kind = sys.argv[1]
outer = int(sys.argv[2])
opt = FFOptimizer(32) if kind == "ff" else GraphOptimizer(2, kind, 16, 2)
s = MetaSettings(
    outer_steps=outer,
    unroll=10,
    horizon=100,
    n_optimizees=8,
    lr=float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3,
    scale=1e-2,
)
t = time.time()
h = meta_train(opt, digits, s, 0)
print(kind, "meta", f"{time.time() - t:.0f}s", [round(v, 3) for v in h[:: max(1, outer // 10)]])
for name, task in (("digits", digits),):
    r = evaluate_optimizer(opt, task, 200, [100 + i for i in range(4)], s.scale)
    print(name, kind, round(r["final_loss"], 4), round(r["test_acc"], 4))
if kind == "ff" or True:
    r = (
        evaluate_optimizer(FFOptimizer(32) if False else opt, mnist, 200, [100 + i for i in range(4)], s.scale)
        if True
        else None
    )
    if r:
        print("mnist", kind, round(r["final_loss"], 4), round(r["test_acc"], 4))
for lr in [] if len(sys.argv) > 4 else (1e-3, 3e-3, 1e-2, 3e-2):
    for name, task in (("digits", digits), ("mnist", mnist)):
        st, gens = fresh_state(task.spec, [100 + i for i in range(4)])
        f, l = baseline_steps(st.flat, task, 200, lr, gens, "adam")
        print("adam", lr, name, round(float(l[-10:].mean()), 4), round(float(held_out_accuracy(f, task).mean()), 4))
