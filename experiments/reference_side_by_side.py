"""metazoo's DWSNet, NFN, NG-GNN and NG-T beside the official implementations, on one zoo.

The official code is not part of metazoo: give the paths of checkouts of
https://github.com/AvivNavon/DWSNets, https://github.com/AllanYangZhou/nfn and
https://github.com/mkofinas/neural-graphs. This script imports their model classes from there
and trains them on the default zoo's INRs (``data/graphs``, from ``dvc repro``): same splits,
same number of epochs, selection on validation accuracy, test accuracy at the best validation
epoch. The JSON records the graphs' data version (the report shows the table only for those
graphs) and each checkout's commit.

Each official model is trained twice:

- ``recipe=reference``: as its own training script does, at its own batch size
  (:data:`REFERENCE_BATCH`). DWSNets (``experiments/mnist/trainer.py`` defaults): raw weights
  with its INR augmentations (translation, rotation, noise, dropout, scale), per-position
  normalization from the training split, AdamW (amsgrad) lr 5e-3, weight decay 5e-4, no
  clipping, batch 512. NFN (``classify_siren_configs``, MNIST: ``inv_ff_io_mnist``): raw
  weights, Adam lr 1e-4 with a linear warm-up over the first 5 % of the steps (its 10 000 of
  200 000), no clipping, batch 32. Neural Graphs (``inr_classification/main.py``,
  ``configs/base.yaml``, ``scripts/mnist_cls_{pna,rt}.sh``): raw weights with its INR
  augmentations, per-layer normalization inside its graph constructor, AdamW (amsgrad) lr 1e-3,
  weight decay 5e-4, 1 000 warm-up steps, clipping at 10, dropout 0.2, batch 128.
- ``recipe=metazoo``: metazoo's training (the normalized inputs of ``data/graphs``, AdamW
  lr 1e-3, weight decay 5e-4, 100 warm-up steps, clipping at 10, sign flips) — the same loop as
  metazoo's own models, :func:`pipeline.train.fit_model`, at ``--batch``.

Two settings (``--setting``, :func:`setting_sizes`):

- ``main``: the main table's models. metazoo's run is exactly the default profile's model
  (``params.yaml: train.<model>``); each official model runs at the same width and depth (the
  official DWSNet with its DeepSets set layer where metazoo's has no set attention).
- ``official``: the official default sizes (DWSNets: 32 channels, 5 layers, set attention; NFN:
  512 channels; Neural Graphs: its MNIST configs). metazoo's run is the paper profile's model
  (``profiles/paper.yaml``).

Every run keeps its per-item test predictions, so the table gives, for each official run, the
paired bootstrap interval (test items and seeds, :func:`pipeline.stats.paired_bootstrap`) of
metazoo's accuracy minus the official one at the same setting.

Run (one model and setting per output file, then merge them; ``--setting main``, 5 epochs, 2
seeds, one core each, measured beside other work: DWSNet about 8 minutes, NFN 15, NG-GNN 27,
NG-T 70; ``--setting official``: DWSNet about 48 minutes)::

    python experiments/reference_side_by_side.py --dwsnets ../DWSNets --runs dwsnet --setting main \
        --epochs 5 --seeds 0 1 --out reports/reference/runs/dwsnet_main.json
    python experiments/reference_side_by_side.py --neural-graphs ../neural-graphs --runs ng_t \
        --setting main --epochs 5 --seeds 0 1 --out reports/reference/runs/ng_t_main.json
    python experiments/reference_side_by_side.py --render reports/reference/runs/*.json

``--render a.json b.json`` merges result files into ``--out``. The official code needs
``einops``; Neural Graphs also ``hydra-core`` and ``random-fourier-features-pytorch`` (installed
with ``--no-deps``: its package imports torchvision only for data loading, which is bypassed).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.augment import augmenter
from pipeline.graphs.neural_graph import graph_template
from pipeline.io import read_json, write_json, write_text
from pipeline.models import build_model
from pipeline.report.common import settings_summary
from pipeline.runs import GraphData
from pipeline.stats import accuracy, paired_bootstrap
from pipeline.train import Classification, TrainSettings, data_shape, fit_model, forward_spec_from_meta, model_inputs
from pipeline.weightspace.normalize import invert_stats
from pipeline.weightspace.spec import ParamSpec

CHECKOUTS = {"dwsnet": "dwsnets", "nfn": "nfn", "ng_gnn": "neural_graphs", "ng_t": "neural_graphs"}
# the official training scripts' batch sizes (DWSNets: experiments/mnist/trainer.py; NFN:
# classify_siren_configs/main.yaml; Neural Graphs: inr_classification/configs/base.yaml)
REFERENCE_BATCH = {"dwsnet": 512, "nfn": 32, "ng_gnn": 128, "ng_t": 128}
IMPLEMENTATIONS = ("official, reference recipe", "official, metazoo recipe", "metazoo, metazoo recipe")
PROFILES = {"main": "params.yaml", "official": "profiles/paper.yaml"}  # metazoo's model at each setting


def setting_sizes(setting: str, name: str) -> dict:
    """The official model's size at ``setting`` (:data:`PROFILES`): ``hidden`` (``None``: the
    official config's widths), and for DWSNet ``n_hidden`` and ``set_layer``."""
    if setting == "official":
        return {"dwsnet": {"hidden": 32, "n_hidden": 4, "set_layer": "sab"}, "nfn": {"hidden": 512}}.get(
            name, {"hidden": None}
        )
    s = metazoo_settings(setting, name)
    if name == "dwsnet":  # DWSNets' n_hidden equivariant layers follow the first: layers - 1
        return {"hidden": s.hidden, "n_hidden": s.layers - 1, "set_layer": "sab" if s.set_heads else "ds"}
    return {"hidden": s.hidden}


def metazoo_settings(setting: str, name: str):
    """metazoo's settings of model ``name`` at ``setting``: its section of :data:`PROFILES`."""
    from pipeline.config import load_params  # noqa: PLC0415

    return load_params(PROFILES[setting]).train.settings(name)


def width_label(name: str, sizes: dict) -> str:
    """The width column: the channels, or the official config's widths."""
    if sizes["hidden"] is not None:
        return str(sizes["hidden"]) + (
            f", {sizes['n_hidden'] + 1} layers, {sizes['set_layer']}" if "n_hidden" in sizes else ""
        )
    return {"ng_gnn": "32 (official)", "ng_t": "64, edges 32 (official)"}[name]


METAZOO = TrainSettings(epochs=8, batch_size=32, lr=1e-3, weight_decay=5e-4, warmup_steps=100, grad_clip=10.0)


@dataclasses.dataclass
class RawSplit:
    """One split as the official code reads it: per layer ``W (G, out, in)`` and ``b (G, out)``
    (raw values), labels ``(G,)``."""

    weights: list[Tensor]
    biases: list[Tensor]
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


def raw_splits(data: GraphData) -> dict[str, RawSplit]:
    """Every split's raw parameters (the graphs' per-layer normalization undone)."""
    spec = ParamSpec.from_dict(data.meta["spec"])
    template = graph_template(spec)
    stats = {k: tuple(v) for k, v in data.meta["norm_stats"].items()}
    out = {}
    for name, g in data.splits.items():
        p = invert_stats(g.to_params(template), spec, stats)
        n = spec.n_layers
        out[name] = RawSplit(
            [p[f"layers.{i}.weight"].float() for i in range(n)], [p[f"layers.{i}.bias"].float() for i in range(n)], g.y
        )
    return out


# ---- official DWSNets ----------------------------------------------------------------------


def _official(root: Path) -> None:
    """Put an official checkout first on the import path. The checkouts share package names
    (``experiments`` in all three, ``nn`` in DWSNets and Neural Graphs): any imported from
    another checkout are dropped first."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("nn", "experiments")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))


def _without_rff() -> None:
    """DWSNets' data module imports its INR class, which needs ``rff`` (and torchvision); the
    augmentation used here does not. An empty stand-in module lets it import without them."""
    import importlib.util
    import types

    if "rff" in sys.modules:
        return
    if importlib.util.find_spec("rff") is None:
        layers = types.ModuleType("rff.layers")
        layers.GaussianEncoding = layers.PositionalEncoding = None
        sys.modules["rff"] = types.ModuleType("rff")
        sys.modules["rff.layers"] = layers
    elif importlib.util.find_spec("torchvision") is None:
        _rff_without_torchvision()


def _rff_without_torchvision() -> None:
    """Import the installed ``rff``'s modules without its package ``__init__``, which imports
    torchvision for data loading that nothing here uses."""
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("rff")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("the official code needs rff: pip install --no-deps random-fourier-features-pytorch")
    pkg = types.ModuleType("rff")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["rff"] = pkg
    for sub in ("functional", "layers"):  # rff.layers reads rff.functional as an attribute
        importlib.import_module(f"rff.{sub}")


def dwsnets_inputs(ws: list[Tensor], bs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """metazoo's ``(G, out, in)`` / ``(G, out)`` -> DWSNets' ``(G, in, out)`` / ``(G, out)`` (no feature axis)."""
    return [w.transpose(1, 2) for w in ws], list(bs)


def dwsnets_augment(ds_cls, ws: list[Tensor], bs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """DWSNets' own ``INRDataset._augment`` (its defaults) on every net of a batch, one at a time."""
    aug = ds_cls.__new__(ds_cls)
    for k, v in dict(
        translation_scale=0.25,
        rotation_degree=45,
        noise_scale=1e-1,
        drop_rate=1e-2,
        resize_scale=0.2,
        pos_scale=0.0,
        quantile_dropout=0.0,
    ).items():
        setattr(aug, k, v)
    out_w, out_b = [[] for _ in ws], [[] for _ in bs]
    for i in range(ws[0].shape[0]):
        w, b = aug._augment(tuple(x[i] for x in ws), tuple(x[i] for x in bs))
        for lst, t in zip(out_w, w, strict=True):
            lst.append(t)
        for lst, t in zip(out_b, b, strict=True):
            lst.append(t)
    return [torch.stack(x) for x in out_w], [torch.stack(x) for x in out_b]


def augmented_batches(ds_cls, train: tuple[list[Tensor], list[Tensor]], y: Tensor, batch: int, gen, prepare):
    """One epoch of shuffled batches of raw ``(weights, biases)``, each augmented by the official
    dataset class ``ds_cls`` (:func:`dwsnets_augment`) and turned into its model's input by
    ``prepare(ws, bs)``; yields ``(input, labels)``."""
    perm = torch.randperm(len(y), generator=gen)
    for s in range(0, len(perm), batch):
        idx = perm[s : s + batch]
        ws, bs = dwsnets_augment(ds_cls, [w[idx] for w in train[0]], [b[idx] for b in train[1]])
        yield prepare(ws, bs), y[idx]


def train_dwsnets_reference(
    root: Path,
    splits: dict[str, RawSplit],
    epochs: int,
    batch: int,
    seed: int,
    sizes: dict,
) -> dict:
    """The official ``DWSModelForClassification`` trained as its MNIST script trains it."""
    _official(root)
    _without_rff()
    from experiments.data import INRDataset  # noqa: PLC0415  (the official code)
    from nn.models import DWSModelForClassification  # noqa: PLC0415

    torch.manual_seed(seed)
    tr = {k: dwsnets_inputs(s.weights, s.biases) for k, s in splits.items()}
    mean_w = [w.mean(0) for w in tr["train"][0]]
    std_w = [w.std(0) for w in tr["train"][0]]
    mean_b = [b.mean(0) for b in tr["train"][1]]
    std_b = [b.std(0) for b in tr["train"][1]]

    def prepare(ws, bs):  # feature axis, then per-position normalization (as INRDataset.__getitem__)
        ws = [((w - m) / s).unsqueeze(-1) for w, m, s in zip(ws, mean_w, std_w, strict=True)]
        bs = [((b - m) / s).unsqueeze(-1) for b, m, s in zip(bs, mean_b, std_b, strict=True)]
        return tuple(ws), tuple(bs)

    model = DWSModelForClassification(
        weight_shapes=tuple(tuple(w.shape[1:3]) for w in tr["train"][0]),
        bias_shapes=tuple(tuple(b.shape[1:2]) for b in tr["train"][1]),
        input_features=1,
        hidden_dim=sizes["hidden"],
        n_hidden=sizes["n_hidden"],
        reduction="max",
        n_fc_layers=1,
        set_layer=sizes["set_layer"],
        n_out_fc=1,
        dropout_rate=0.0,
        bn=True,
        diagonal=False,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, amsgrad=True, weight_decay=5e-4)

    def step_batches(gen):
        return augmented_batches(INRDataset, tr["train"], splits["train"].y, batch, gen, prepare)

    def predict(split):
        ws, bs = prepare(*tr[split])
        return torch.cat(
            [
                model((tuple(w[s : s + 512] for w in ws), tuple(b[s : s + 512] for b in bs)))
                for s in range(0, len(splits[split]), 512)
            ]
        )

    return _loop(model, opt, None, step_batches, predict, splits, epochs, seed, clip=None)


# ---- official NFN --------------------------------------------------------------------------


def nfn_model(root: Path, spec_feats, hidden: int):
    """The official ``InvariantNFN`` with its MNIST SIREN configuration (``inv_ff_io_mnist``) at width ``hidden``."""
    _official(root)
    sys.path.insert(0, str(root / "experiments" / "perceiver-pytorch"))
    from functools import partial  # noqa: PLC0415

    from experiments.models import InvariantNFN, MlpHead  # noqa: PLC0415  (the official code)
    from nfn.common import network_spec_from_wsfeat  # noqa: PLC0415
    from nfn.layers import GaussianFourierFeatureTransform, IOSinusoidalEncoding  # noqa: PLC0415

    spec = network_spec_from_wsfeat(spec_feats, set_all_dims=True)
    return InvariantNFN(
        spec,
        hchannels=[hidden] * 3,
        head_cls=partial(MlpHead, num_out=10, dropout=0.1, sigmoid=False, lnorm=False),
        mode="NP",
        feature_dropout=0.1,
        normalize=False,
        lnorm=None,
        append_stats=False,
        inp_enc_cls=partial(GaussianFourierFeatureTransform, mapping_size=128, scale=3),
        pos_enc_cls=partial(IOSinusoidalEncoding, max_freq=3, num_bands=3, enc_layers=False),
    )


def train_nfn_reference(
    root: Path, splits: dict[str, RawSplit], epochs: int, batch: int, seed: int, hidden: int
) -> dict:
    """The official NFN trained as its SIREN classification script trains it."""
    _official(root)
    from nfn.common import WeightSpaceFeatures  # noqa: PLC0415  (the official code)

    def feats(split: RawSplit, idx):
        return WeightSpaceFeatures(
            [w[idx].unsqueeze(1) for w in split.weights], [b[idx].unsqueeze(1) for b in split.biases]
        )

    torch.manual_seed(seed)
    model = nfn_model(root, feats(splits["train"], slice(0, 2)), hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    total = epochs * math.ceil(len(splits["train"]) / batch)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, i / warm))

    def step_batches(gen):
        perm = torch.randperm(len(splits["train"]), generator=gen)
        for s in range(0, len(perm), batch):
            idx = perm[s : s + batch]
            yield feats(splits["train"], idx), splits["train"].y[idx]

    def predict(split):
        n = len(splits[split])
        return torch.cat([model(feats(splits[split], slice(s, s + 512))) for s in range(0, n, 512)])

    return _loop(model, opt, sched, step_batches, predict, splits, epochs, seed, clip=None)


def _loop(model: nn.Module, opt, sched, step_batches, predict, splits, epochs: int, seed: int, clip) -> dict:
    """Cross-entropy training; test accuracy at the best validation epoch (the official scripts' selection)."""
    gen = torch.Generator().manual_seed(seed)
    best = {"val_acc": -1.0}
    curve = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.time()
        losses = []
        for inputs, y in step_batches(gen):
            loss = nn.functional.cross_entropy(model(inputs), y)
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            pred = {s: predict(s).argmax(1) for s in ("val", "test")}
        acc = {s: float((pred[s] == splits[s].y).float().mean()) for s in ("val", "test")}
        row = {
            "epoch": epoch,
            "train_loss": sum(losses) / len(losses),
            "val_acc": acc["val"],
            "seconds": time.time() - t0,
        }
        curve.append(row)
        print(
            f"  epoch {epoch}: loss {row['train_loss']:.4f} val {acc['val']:.4f} ({row['seconds']:.0f} s)", flush=True
        )
        if acc["val"] > best["val_acc"]:
            best = {"val_acc": acc["val"], "test_acc": acc["test"], "best_epoch": epoch}
            best["test_predictions"] = pred["test"].tolist()
    return best | {"curve": curve, "n_params": sum(p.numel() for p in model.parameters())}


# ---- official Neural Graphs (NG-GNN: its PNA; NG-T: its relational transformer) ----------------

NG_CONFIGS = {"ng_gnn": "pna.yaml", "ng_t": "rtransformer.yaml"}


def _neural_graphs(root: Path) -> None:
    """Put the Neural Graphs checkout first on the import path (:func:`_official`). Its graph
    constructor imports ``rff``, whose package ``__init__`` needs torchvision: the ``rff`` modules
    the constructor uses are loaded without that ``__init__``. Its GNN imports
    ``torch_geometric.utils.trim_to_layer``, private (``_trim_to_layer``) since PyG 2.5: the old
    name is pointed at it. Its data module imports torchvision's transforms for image data sets,
    which the augmentation used here does not touch: a stand-in module if torchvision is absent."""
    import importlib
    import importlib.util
    import types

    if importlib.util.find_spec("torch_geometric.utils.trim_to_layer") is None:
        sys.modules["torch_geometric.utils.trim_to_layer"] = importlib.import_module(
            "torch_geometric.utils._trim_to_layer"
        )

    _official(root)
    if "rff" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        _rff_without_torchvision()
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:  # transforms: unused
        vision = types.ModuleType("torchvision")
        vision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = vision, vision.transforms


def ng_width(name: str, hidden: int | None) -> dict:
    """Overrides of the official model config for width ``hidden`` (``None``: the official widths).
    NG-GNN: every width ``hidden`` (sinusoidal embedding as wide); NG-T: node width ``hidden``,
    edges half of it, the attention and MLP hidden widths twice it, heads ``max(1, hidden // 8)``
    (the official 64 / 32 / 128, 8 heads, scaled together)."""
    if hidden is None:
        return {}
    if name == "ng_gnn":
        return {"d_hid": hidden, "graph_constructor": {"sin_emb_dim": hidden}}
    return {
        "d_node": hidden,
        "d_edge": max(1, hidden // 2),
        "d_attn_hid": 2 * hidden,
        "d_node_hid": 2 * hidden,
        "d_edge_hid": hidden,
        "d_out_hid": 2 * hidden,
        "n_heads": max(1, hidden // 8),
        "graph_constructor": {"sin_emb_dim": hidden},
    }


def ng_official_model(
    root: Path, name: str, layout: list[int], hidden: int | None, stats: dict | None, dropout: float = 0.2
) -> nn.Module:
    """The official NG-GNN / NG-T from its MNIST INR-classification config and script overrides
    (``scripts/mnist_cls_{pna,rt}.sh``: dropout 0.2, positional embeddings, no probes; NG-GNN
    with reversed edge features), at width ``hidden`` (:func:`ng_width`). ``stats``: the
    per-layer weight / bias means and stds its graph constructor normalizes raw inputs with
    (``None``: inputs already normalized). ``dropout``: the scripts' 0.2 unless given."""
    _neural_graphs(root)
    import hydra  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    model = OmegaConf.load(root / "experiments" / "inr_classification" / "configs" / "model" / NG_CONFIGS[name])
    cfg = OmegaConf.create({"data": {"num_classes": 10, "inr_model": None, "stats": stats}, "model": model})
    script = {"graph_constructor": {"num_probe_features": 0, "use_pos_embed": True}}
    if name == "ng_gnn":
        script |= {"gnn_backbone": {"dropout": dropout}, "rev_edge_features": True}
    else:
        script |= {"dropout": dropout, "modulate_v": True}
    cfg.model = OmegaConf.merge(cfg.model, script, ng_width(name, hidden))
    OmegaConf.resolve(cfg)
    return hydra.utils.instantiate(cfg.model, layer_layout=layout)


def layer_stats(split: RawSplit) -> dict:
    """Per-layer scalar means and stds of the raw weights and biases (as the official
    ``configs/data/mnist.yaml`` lists for its zoo), from the training split."""
    return {
        "weights_mean": [float(w.mean()) for w in split.weights],
        "weights_std": [float(w.std()) for w in split.weights],
        "biases_mean": [float(b.mean()) for b in split.biases],
        "biases_std": [float(b.std()) for b in split.biases],
    }


def train_ng_reference(
    root: Path,
    name: str,
    splits: dict[str, RawSplit],
    epochs: int,
    batch: int,
    seed: int,
    hidden: int | None,
    dropout: float = 0.2,
) -> dict:
    """The official NG-GNN / NG-T trained as its ``inr_classification/main.py`` trains it: raw
    weights with its ``INRDataset`` augmentations, AdamW (amsgrad) lr 1e-3, weight decay 5e-4,
    linear warm-up over 1 000 steps, gradients clipped at 10."""
    import numpy as np  # noqa: PLC0415

    torch.manual_seed(seed)
    random.seed(seed)  # its augmentations also draw from Python's and NumPy's generators
    np.random.seed(seed)
    tr = {k: dwsnets_inputs(s.weights, s.biases) for k, s in splits.items()}
    layout = [tr["train"][0][0].shape[1]] + [b.shape[1] for b in tr["train"][1]]
    model = ng_official_model(root, name, layout, hidden, layer_stats(splits["train"]), dropout)
    from experiments.data import INRDataset  # noqa: PLC0415  (the official code)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, amsgrad=True)
    # its experiments.lr_scheduler.WarmupLRScheduler (lr x step / 1000 up to step 1000), whose
    # constructor passes `verbose`, which torch no longer takes: the same schedule as a LambdaLR
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 1000))

    def feed(ws, bs):
        return tuple(w.unsqueeze(-1) for w in ws), tuple(b.unsqueeze(-1) for b in bs)

    def step_batches(gen):
        return augmented_batches(INRDataset, tr["train"], splits["train"].y, batch, gen, feed)

    def predict(split):
        ws, bs = tr[split]
        n = len(splits[split])
        return torch.cat(
            [model(feed([w[s : s + 256] for w in ws], [b[s : s + 256] for b in bs])) for s in range(0, n, 256)]
        )

    return _loop(model, opt, sched, step_batches, predict, splits, epochs, seed, clip=10.0)


# ---- the official models under metazoo's training, and metazoo's models ---------------------


class _DWSNetsOnFlat(nn.Module):
    """The official DWSNets model reading metazoo's normalized parameters (a :class:`FlatSet` batch)."""

    input_kind = "flat"

    def __init__(self, model: nn.Module, spec: ParamSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, flat: Tensor) -> Tensor:
        from pipeline.weightspace.spec import unflatten

        p = unflatten(flat, self.spec)
        n = self.spec.n_layers
        ws = tuple(p[f"layers.{i}.weight"].transpose(1, 2).unsqueeze(-1) for i in range(n))
        bs = tuple(p[f"layers.{i}.bias"].unsqueeze(-1) for i in range(n))
        return self.model((ws, bs))


class _NFNOnFlat(_DWSNetsOnFlat):
    """The official NFN reading metazoo's normalized parameters."""

    def forward(self, flat: Tensor) -> Tensor:
        from nfn.common import WeightSpaceFeatures  # noqa: PLC0415  (the official code)

        from pipeline.weightspace.spec import unflatten

        p = unflatten(flat, self.spec)
        n = self.spec.n_layers
        return self.model(
            WeightSpaceFeatures(
                [p[f"layers.{i}.weight"].unsqueeze(1) for i in range(n)],
                [p[f"layers.{i}.bias"].unsqueeze(1) for i in range(n)],
            )
        )


def train_with_metazoo(model: nn.Module, data: GraphData, epochs: int, batch: int, seed: int) -> dict:
    """Any model (flat or graph input: ``model.input_kind``) through metazoo's own training loop
    and augmentation."""
    spec = ParamSpec.from_dict(data.meta["spec"])
    template = graph_template(spec)
    kind = getattr(model, "input_kind", "flat")
    inputs = {s: model_inputs(g, template, kind) for s, g in data.splits.items()}
    settings = dataclasses.replace(METAZOO, epochs=epochs, batch_size=batch)
    torch.manual_seed(seed)
    res = fit_model(
        model,
        inputs["train"],
        inputs["val"],
        inputs["test"],
        settings,
        seed,
        Classification(10),
        on_epoch=lambda r: print(
            f"  epoch {int(r['epoch'])}: loss {r['train_loss']:.4f} val {r['val_acc']:.4f}", flush=True
        ),
        augment=augmenter("sign_flip", kind, spec, False, forward_spec_from_meta(data.meta)),
    )
    return {
        "val_acc": res.best_val,
        "test_acc": res.test["acc"],
        "best_epoch": res.best_epoch,
        "test_predictions": res.test_predictions,
        "n_params": res.n_params,
        "curve": res.history,
    }


def metazoo_model(name: str, data: GraphData, setting: str) -> nn.Module:
    """metazoo's model ``name`` with its settings at ``setting`` (:func:`metazoo_settings`)."""
    spec = ParamSpec.from_dict(data.meta["spec"])
    shape = data_shape(data.splits["train"], graph_template(spec), 10, forward_spec_from_meta(data.meta))
    return build_model(name, metazoo_settings(setting, name), shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dwsnets", type=Path, help="checkout of AvivNavon/DWSNets")
    ap.add_argument("--nfn", type=Path, help="checkout of AllanYangZhou/nfn")
    ap.add_argument("--graphs", type=Path, default=Path("data/graphs"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--setting", default="main", choices=tuple(PROFILES), help="model sizes (setting_sizes)")
    ap.add_argument("--ng-dropout", type=float, help="the official NG-GNN / NG-T's dropout (its scripts: 0.2)")
    ap.add_argument("--neural-graphs", type=Path, help="checkout of mkofinas/neural-graphs")
    ap.add_argument("--runs", nargs="+", default=["dwsnet", "nfn"], choices=CHECKOUTS, help="models to compare")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS), help="runs to do")
    ap.add_argument("--out", type=Path, default=Path("reports/reference/side_by_side.json"))
    ap.add_argument("--render", type=Path, nargs="+", help="only merge these result files into --out (and its .md)")
    args = ap.parse_args()
    if args.render:
        runs = [r for f in args.render for r in read_json(f)["runs"]]
        first = read_json(args.render[0])
        keep = ("epochs", "batch", "graphs", "data_version", "test_targets")
        versions = {read_json(f).get("data_version") for f in args.render}
        if len(versions) > 1:
            ap.error(f"these files ran on different graphs (data versions {sorted(map(str, versions))})")
        commits = {k: v for f in args.render for k, v in read_json(f).get("commits", {}).items()}
        save(args.out, {k: first[k] for k in keep if k in first} | {"commits": commits, "runs": runs})
        return
    official = any(label.startswith("official") for label in args.only)
    for name in args.runs:
        if official and getattr(args, CHECKOUTS[name]) is None:
            ap.error(f"--runs {name} needs the checkout (--{CHECKOUTS[name].replace('_', '-')})")
    torch.set_num_threads(args.threads)
    data = GraphData.load(args.graphs)
    splits = raw_splits(data)
    spec = ParamSpec.from_dict(data.meta["spec"])
    results = []
    for seed in args.seeds:
        for name in args.runs:
            sizes = setting_sizes(args.setting, name)
            if args.ng_dropout is not None and name in NG_CONFIGS:
                sizes["dropout"] = args.ng_dropout
            runs = {
                "official, reference recipe": (reference_run, (name, args, splits, seed, sizes)),
                "official, metazoo recipe": (official_metazoo_run, (name, args, splits, spec, data, seed, sizes)),
                "metazoo, metazoo recipe": (metazoo_own_run, (name, data, args, seed)),
            }
            for label, (run, run_args) in runs.items():
                if label not in args.only:
                    continue
                print(f"{name} seed {seed}: {label}", flush=True)
                t0 = time.time()
                r = run(*run_args)
                if label.endswith("reference recipe"):
                    label = f"{label} (batch {REFERENCE_BATCH.get(name, args.batch)})"
                if "dropout" in sizes and label.startswith("official"):
                    label = f"{label}, dropout {sizes['dropout']:g}"
                width = width_label(name, sizes)
                if label.startswith("metazoo"):
                    width = settings_summary(dataclasses.asdict(metazoo_settings(args.setting, name)))
                r.update(
                    model=name,
                    setting=args.setting,
                    implementation=label,
                    seed=seed,
                    hidden=width,
                    seconds=time.time() - t0,
                )
                print(
                    f"{name} seed {seed}: {label}: test acc {r['test_acc']:.4f} at best val epoch {r['best_epoch']}",
                    flush=True,
                )
                results.append(r)
                meta = {
                    "epochs": args.epochs,
                    "batch": args.batch,
                    "graphs": str(args.graphs),
                    "data_version": data.version,  # the report shows the table only for these graphs
                    "test_targets": splits["test"].y.tolist(),
                    "commits": {
                        k: checkout_commit(getattr(args, k)) for k in set(CHECKOUTS.values()) if getattr(args, k)
                    },
                }
                save(args.out, meta | {"runs": results})


def markdown(result: dict) -> str:
    """The side-by-side table: test accuracy at the best validation epoch, mean ± std over seeds,
    and for each official run the interval of metazoo's accuracy minus the official one."""
    rows: dict[tuple, list[dict]] = {}
    for r in result["runs"]:
        rows.setdefault((r["model"], r.get("setting", "main"), r["implementation"], r["hidden"]), []).append(r)
    lines = [
        f"On `{result['graphs']}`, {result['epochs']} epochs each; metazoo's recipe at batch {result['batch']} "
        "(`experiments/reference_side_by_side.py`). Official checkouts: "
        + (", ".join(f"{k} `{v[:12]}`" for k, v in result.get("commits", {}).items()) or "commits not recorded")
        + ". *metazoo − official*: metazoo's own model minus this row, in points, with the 95 % "
        "paired bootstrap interval over test items and seeds; *within* where the interval holds zero.",
        "",
        "| model | setting | implementation, training recipe | width | seeds | test acc % | best epoch | s / epoch "
        "| params | metazoo − official |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, setting, impl, hidden), rs in sorted(rows.items(), key=lambda kv: kv[0][:2]):
        acc = torch.tensor([100 * r["test_acc"] for r in rs])
        std = f" ± {float(acc.std(correction=0)):.1f}" if len(rs) > 1 else ""
        per_epoch = sum(r["seconds"] for r in rs) / len(rs) / result["epochs"]
        epochs = ", ".join(str(r["best_epoch"]) for r in rs)
        ours = next((v for k, v in rows.items() if k[:3] == (model, setting, "metazoo, metazoo recipe")), None)
        lines.append(
            f"| {model} | {setting} | {impl} | {hidden} | {len(rs)} | {float(acc.mean()):.1f}{std} | {epochs} | "
            f"{per_epoch:.0f} | {rs[0]['n_params']:,} | {versus(ours, rs, result.get('test_targets'), impl)} |"
        )
    return "\n".join(lines) + "\n"


def versus(ours: list[dict] | None, official: list[dict], targets: list | None, impl: str) -> str:
    """metazoo's runs minus an official row's (points), 95 % paired bootstrap interval, and its reading."""
    if impl.startswith("metazoo"):
        return ""
    have = ours and targets and all("test_predictions" in r for r in (*ours, *official))
    if not have:
        return "no per-item predictions"
    iv = paired_bootstrap(
        accuracy,
        [torch.tensor(r["test_predictions"]) for r in official],
        [torch.tensor(r["test_predictions"]) for r in ours],
        torch.tensor(targets),
    )
    reading = "within" if iv.lo <= 0 <= iv.hi else ("better" if iv.lo > 0 else "worse")
    return f"{100 * iv.diff:+.1f} [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]: {reading}"


def checkout_commit(path: Path) -> str:
    """The commit a checkout of the official code is at (``git rev-parse HEAD``), or why not."""
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else f"unknown ({done.stderr.strip()[:80]})"


def save(out: Path, result: dict) -> None:
    """The results as JSON and the table beside them (``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))


def reference_run(name: str, args, splits: dict[str, RawSplit], seed: int, sizes: dict) -> dict:
    """An official model (:func:`setting_sizes`) trained by its own recipe, at its own batch size
    (:data:`REFERENCE_BATCH`)."""
    batch = REFERENCE_BATCH.get(name, args.batch)
    if name == "dwsnet":
        return train_dwsnets_reference(args.dwsnets, splits, args.epochs, batch, seed, sizes)
    if name in NG_CONFIGS:
        return train_ng_reference(
            args.neural_graphs, name, splits, args.epochs, batch, seed, sizes["hidden"], sizes.get("dropout", 0.2)
        )
    return train_nfn_reference(args.nfn, splits, args.epochs, batch, seed, sizes["hidden"])


def metazoo_run(model: nn.Module, data: GraphData, args, seed: int) -> dict:
    """Any flat-input model trained by metazoo's recipe."""
    return train_with_metazoo(model, data, args.epochs, args.batch, seed)


def metazoo_own_run(name: str, data: GraphData, args, seed: int) -> dict:
    """metazoo's own model (:func:`metazoo_model`, built only when this run is asked for) by
    metazoo's recipe, initialized from ``seed`` as the pipeline's run of that seed
    (:func:`pipeline.tasks.job.fit_job`)."""
    torch.manual_seed(seed)
    return metazoo_run(metazoo_model(name, data, args.setting), data, args, seed)


def official_metazoo_run(name: str, args, splits, spec: ParamSpec, data: GraphData, seed: int, sizes: dict) -> dict:
    """An official model trained by metazoo's recipe."""
    torch.manual_seed(seed)  # the official model's initialization, as in its reference-recipe run
    return metazoo_run(official_on_flat(name, args, splits, spec, sizes), data, args, seed)


def official_on_flat(name: str, args, splits: dict[str, RawSplit], spec: ParamSpec, sizes: dict) -> nn.Module:
    """An official model (same configuration as its reference-recipe run) reading metazoo's inputs."""
    if name in NG_CONFIGS:  # its inputs already normalized: no statistics in the graph constructor
        layout = [splits["train"].weights[0].shape[2]] + [b.shape[1] for b in splits["train"].biases]
        model = ng_official_model(args.neural_graphs, name, layout, sizes["hidden"], None, sizes.get("dropout", 0.2))
        return _DWSNetsOnFlat(model, spec)
    if name == "dwsnet":
        _official(args.dwsnets)
        from nn.models import DWSModelForClassification  # noqa: PLC0415  (the official code)

        t = splits["train"]
        return _DWSNetsOnFlat(
            DWSModelForClassification(
                weight_shapes=tuple((w.shape[2], w.shape[1]) for w in t.weights),
                bias_shapes=tuple((b.shape[1],) for b in t.biases),
                input_features=1,
                hidden_dim=sizes["hidden"],
                n_hidden=sizes["n_hidden"],
                reduction="max",
                set_layer=sizes["set_layer"],
                bn=True,
            ),
            spec,
        )
    _official(args.nfn)
    from nfn.common import WeightSpaceFeatures  # noqa: PLC0415

    t = splits["train"]
    feats = WeightSpaceFeatures([w[:2].unsqueeze(1) for w in t.weights], [b[:2].unsqueeze(1) for b in t.biases])
    return _NFNOnFlat(nfn_model(args.nfn, feats, sizes["hidden"]), spec)


if __name__ == "__main__":
    main()
