"""``params.yaml`` -> typed, validated settings.

Every section is a frozen dataclass whose fields declare their own allowed values
(:func:`setting`: ``hidden: int = setting(32, gt=0)``). :func:`load_params` walks the YAML
against the dataclass fields and fails before any work is done, naming the offending key and
what it allows (``train.ng_gnn.hiden: unknown key``, ``zoo.steps: expected int, got str``,
``train.lr: -1.0 is out of range (allowed: > 0)``). Every float must be finite unless its field
allows ``.inf``; a key written twice in the file is refused (YAML would keep the last).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A key of ``params.yaml`` is unknown, missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Rule:
    """Allowed values of one field: bounds (``gt``/``ge``/``lt``/``le``) or a set (``one_of``).

    For a list field the bounds apply to every item and ``min_len``/``max_len``/``unique`` to
    the list. Floats must be finite; ``allow_inf`` admits ``.inf`` (never NaN).
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    one_of: tuple = ()
    allow_inf: bool = False
    min_len: int = 0
    max_len: int | None = None
    unique: bool = False

    def allowed(self) -> str:
        """``"'np', 'hnp'"``, ``"> 0"``, ``"[0, 1)"``: what this rule admits, for messages."""
        if self.one_of:
            return ", ".join(map(repr, self.one_of))
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if lo is not None and hi is not None:
            return f"{'[' if self.ge is not None else '('}{lo}, {hi}{']' if self.le is not None else ')'}"
        if lo is not None:
            return f"{'>=' if self.ge is not None else '>'} {lo}"
        if hi is not None:
            return f"{'<=' if self.le is not None else '<'} {hi}"
        return "any finite number"

    def admits(self, x: Any) -> bool:
        """Whether the scalar ``x`` is within ``one_of`` and the bounds."""
        if self.one_of:
            return x in self.one_of
        return not (
            (self.gt is not None and not x > self.gt)
            or (self.ge is not None and not x >= self.ge)
            or (self.lt is not None and not x < self.lt)
            or (self.le is not None and not x <= self.le)
        )


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field with ``default`` (a list is copied per instance) whose value read from
    ``params.yaml`` must satisfy ``Rule(**rule)``: ``dropout: float = setting(0.0, ge=0, lt=1)``."""
    meta = {"rule": Rule(**rule)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_ANY = Rule()


def _check(value: Any, rule: Rule, path: str) -> None:
    """Raise :class:`ConfigError` naming ``path`` where ``value`` breaks ``rule``."""
    if isinstance(value, list):
        if len(value) < rule.min_len or (rule.max_len is not None and len(value) > rule.max_len):
            n = rule.min_len if rule.max_len == rule.min_len else f"at least {rule.min_len}"
            raise ConfigError(f"{path}: needs {n} item(s), has {len(value)}")
        if rule.unique and len(set(value)) < len(value):
            dups = sorted({v for v in value if value.count(v) > 1}, key=str)
            raise ConfigError(f"{path}: {', '.join(map(repr, dups))} listed twice (items must be unique)")
        for i, v in enumerate(value):
            _check(v, rule, f"{path}[{i}]")
        return
    if isinstance(value, float) and not math.isfinite(value) and not (rule.allow_inf and value > 0):
        inf = ", or .inf" if rule.allow_inf else ""
        raise ConfigError(f"{path}: {value} is not a finite number (allowed: {rule.allowed()}{inf})")
    if isinstance(value, int | float | str) and not rule.admits(value):
        what = "is not allowed" if rule.one_of else "is out of range"
        raise ConfigError(f"{path}: {value!r} {what} (allowed: {rule.allowed()})")


class ModelSections:
    """Base of a section whose extra keys are model names (``train.ng_gnn: {...}``).

    Each such key is validated against that model's ``Settings`` dataclass
    (:mod:`pipeline.models`) and kept in ``model_settings``; a model listed in ``models`` without
    a section gets its ``Settings()`` defaults. A new model therefore needs no change here.
    A key ``<model>@<variant>`` holds overrides of ``<model>``'s section: the settings of the
    listed model ``<model>@<variant>`` (:func:`pipeline.models.settings_key`).
    """

    def settings(self, name: str) -> Any:
        """The settings of listed model ``name`` (a ``_perm`` suffix reads the base model's
        section, ``@<variant>`` the variant's)."""
        from pipeline.models import settings_key, settings_type

        return self.model_settings.get(settings_key(name)) or settings_type(name)()

    def settings_by_model(self) -> dict[str, Any]:
        """``{settings key: settings}`` for every model in ``models`` (``mlp`` for ``mlp_perm``,
        ``ng_gnn@probes`` for itself: :func:`pipeline.models.settings_key`)."""
        from pipeline.models import settings_key

        return {settings_key(m): self.settings(m) for m in self.models}


# Upper bounds that refuse a typo before any work (a width of 10**7 would fail later, out of
# memory inside a task): widths and batch sizes far beyond any zoo or metanetwork here.
MAX_WIDTH = 4096
MAX_BATCH = 1 << 16
MAX_SEED = 2**31 - 1  # per-net and per-run seeds are derived from it and passed to torch.manual_seed

# Images in each offline source (pipeline.data.load_images): the splits drawn from it must fit.
SOURCE_SIZES = {"mnist_offline": 5000, "digits_offline": 1797}

# The fused spline kernel (pipeline/zoo/csrc/kan_spline.cpp, kMaxOrder) handles orders 0 .. 7.
KAN_MAX_ORDER = 7
# scikit-learn's digits (the KAN classifier zoo): every net trains on >= one digit per class.
N_DIGITS, N_DIGIT_CLASSES = 1797, 10


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist_offline"
    n_train: int = setting(4000, gt=0)
    n_val: int = setting(500, gt=0)
    n_test: int = setting(500, gt=0)


@dataclass(frozen=True)
class ZooConfig:
    family: str = setting("siren", one_of=("siren",))  # the only family implemented
    hidden: list[int] = setting([32, 32], gt=0, le=MAX_WIDTH, min_len=1)
    omega0: float = setting(30.0, gt=0)
    init: str = "standard"
    steps: int = setting(300, gt=0)
    lr: float = setting(5e-4, gt=0)
    target_psnr: float = setting(50.0, gt=0)
    psnr_floor: float = 20.0
    inrs_per_train_image: int = setting(1, ge=1)
    shard_size: int = setting(250, gt=0)
    chunk_size: int = setting(16, gt=0)
    threads_per_task: int = setting(1, ge=1)

    def check(self) -> list[tuple[str, str]]:
        if self.psnr_floor >= self.target_psnr:  # every early-stopped INR would count as diverged
            return [("psnr_floor", f"{self.psnr_floor} must be < target_psnr ({self.target_psnr})")]
        return []


@dataclass(frozen=True)
class TrainConfig(ModelSections):
    models: list[str] = setting(["mlp", "ng_gnn"], unique=True, min_len=1)
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    epochs: int = setting(10, gt=0)
    batch_size: int = setting(128, gt=0, le=MAX_BATCH)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(5e-4, ge=0)
    warmup_steps: int = setting(100, ge=0)
    grad_clip: float = setting(10.0, gt=0, allow_inf=True)  # .inf: no clipping
    compile: bool = False  # torch.compile the model (pipeline.train.compile_model)
    augment: str = "none"
    threads_per_task: int = setting(1, ge=1)
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class EditConfig(ModelSections):
    """INR editing (dilation, :mod:`pipeline.tasks.editing`) with each model's equivariant editor."""

    models: list[str] = setting(["dwsnet", "nfn", "ng_gnn", "ng_t"], unique=True, min_len=1)
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    epochs: int = setting(10, gt=0)
    n_train: int = setting(0, ge=0)  # n training INRs drawn at random (0: all); val and test are always whole
    batch_size: int = setting(32, gt=0, le=MAX_BATCH)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    warmup_steps: int = setting(100, ge=0)
    grad_clip: float = setting(10.0, gt=0, allow_inf=True)  # .inf: no clipping
    compile: bool = False  # torch.compile the model (pipeline.train.compile_model)
    init_scale: float = setting(1e-3, gt=0)  # initial residual scale of every editor
    augment: str = "sign_flip"
    threads_per_task: int = setting(1, ge=1)
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class KanInrConfig:
    hidden: list[int] = setting([8, 8], gt=0, le=MAX_WIDTH)
    grid: int = setting(5, gt=0)
    order: int = setting(3, ge=0, le=KAN_MAX_ORDER)
    steps: int = setting(300, gt=0)
    lr: float = setting(2e-2, gt=0)
    n_train: int = setting(2000, gt=0)
    n_val: int = setting(250, gt=0)
    n_test: int = setting(250, gt=0)


@dataclass(frozen=True)
class KanClassifierConfig:
    """Ranges (``[low, high]``) and choices (``steps``) are drawn per net."""

    hidden: list[int] = setting([8], gt=0, le=MAX_WIDTH)
    grid: int = setting(5, gt=0)
    order: int = setting(3, ge=0, le=KAN_MAX_ORDER)
    n_train: int = setting(1500, gt=0)
    n_val: int = setting(250, gt=0)
    n_test: int = setting(250, gt=0)
    digits_test: int = setting(500, ge=1, le=N_DIGITS - N_DIGIT_CLASSES)  # the rest train the nets
    lr: list[float] = setting([1e-3, 1e-1], gt=0, min_len=2, max_len=2)  # log-uniform
    weight_decay: list[float] = setting([1e-5, 1e-1], gt=0, min_len=2, max_len=2)  # log-uniform
    steps: list[int] = setting([50, 100, 200], gt=0, min_len=1)
    label_noise: list[float] = setting([0.0, 0.5], ge=0, le=1, min_len=2, max_len=2)
    train_fraction: list[float] = setting([0.05, 1.0], ge=0, le=1, min_len=2, max_len=2)

    def check(self) -> list[tuple[str, str]]:
        pairs = ("lr", "weight_decay", "label_noise", "train_fraction")
        return [(k, "needs [low, high] with low <= high") for k in pairs if getattr(self, k)[0] > getattr(self, k)[1]]


@dataclass(frozen=True)
class KanTrainConfig(ModelSections):
    models: list[str] = setting(["mlp", "mlp_perm", "ng_gnn", "ws_kan"], unique=True, min_len=1)
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    epochs: int = setting(30, gt=0)
    batch_size: int = setting(32, gt=0, le=MAX_BATCH)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(5e-4, ge=0)
    warmup_steps: int = setting(100, ge=0)
    grad_clip: float = setting(10.0, gt=0, allow_inf=True)  # .inf: no clipping
    compile: bool = False  # torch.compile the model (pipeline.train.compile_model)
    threads_per_task: int = setting(1, ge=1)
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class KanForwardConfig(ModelSections):
    """The expressivity check (:mod:`pipeline.kan_forward`): fresh query points every step."""

    models: list[str] = setting(["ws_kan"], unique=True, min_len=1)
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    steps: int = setting(2000, gt=0)
    kans_per_step: int = setting(32, gt=0)
    points_per_kan: int = setting(4, gt=0)
    lr: float = setting(2e-3, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    grad_clip: float = setting(10.0, gt=0, allow_inf=True)  # .inf: no clipping
    compile: bool = False  # torch.compile the model (pipeline.train.compile_model)
    eval_every: int = setting(250, gt=0)
    eval_points: int = setting(16, gt=0)
    threads_per_task: int = setting(1, ge=1)
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class KanConfig:
    inr: KanInrConfig = field(default_factory=KanInrConfig)
    classifier: KanClassifierConfig = field(default_factory=KanClassifierConfig)
    shard_size: int = setting(250, gt=0)
    chunk_size: int = setting(16, gt=0)
    threads_per_task: int = setting(1, ge=1)
    train: KanTrainConfig = field(default_factory=KanTrainConfig)
    forward: KanForwardConfig = field(default_factory=KanForwardConfig)


@dataclass(frozen=True)
class CnnFamilyConfig:
    """One CNN zoo family: ``n_architectures`` (heterogeneous: distinct draws; homogeneous: 1),
    each trained ``runs_per_architecture`` times; of each architecture's runs, ``n_val`` and
    ``n_test`` go to validation and test (every checkpoint of a run in its run's split)."""

    n_architectures: int = setting(1, gt=0)
    runs_per_architecture: int = setting(240, gt=0)
    n_val: int = setting(30, ge=1)
    n_test: int = setting(30, ge=1)

    def check(self) -> list[tuple[str, str]]:
        if self.n_val + self.n_test >= self.runs_per_architecture:
            return [("runs_per_architecture", f"must exceed n_val + n_test ({self.n_val + self.n_test})")]
        return []


@dataclass(frozen=True)
class CnnTrainConfig(ModelSections):
    """Accuracy prediction on the CNN zoos. ``models`` train on the homogeneous zoo,
    ``heterogeneous_models`` (models that read graphs of any architecture) on the heterogeneous one."""

    # graph models need layers >= 6 here (their default is 4): params.yaml lists them with their sections
    models: list[str] = setting(["mlp", "statnn"], unique=True, min_len=1)
    heterogeneous_models: list[str] = setting(["statnn"], unique=True, min_len=1)
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    epochs: int = setting(20, gt=0)
    batch_size: int = setting(32, gt=0, le=MAX_BATCH)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(5e-4, ge=0)
    warmup_steps: int = setting(100, ge=0)
    grad_clip: float = setting(10.0, gt=0, allow_inf=True)  # .inf: no clipping
    compile: bool = False  # torch.compile the model (pipeline.train.compile_model)
    threads_per_task: int = setting(1, ge=1)
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models

    def family_models(self, family: str) -> list[str]:
        return self.heterogeneous_models if family == "heterogeneous" else self.models

    def settings_by_model(self) -> dict[str, Any]:
        from pipeline.models import settings_key

        return {settings_key(m): self.settings(m) for m in [*self.models, *self.heterogeneous_models]}


@dataclass(frozen=True)
class CnnConfig:
    """CNN classifier zoos of the offline MNIST digits (:mod:`pipeline.zoo.cnn_zoo`). Ranges
    (``[low, high]``; log-uniform for lr, weight decay and init scale) and choices (``steps``)
    are drawn per run."""

    homogeneous: CnnFamilyConfig = field(default_factory=CnnFamilyConfig)
    heterogeneous: CnnFamilyConfig = field(default_factory=lambda: CnnFamilyConfig(24, 12, 2, 2))
    digits_test: int = setting(1000, ge=1, le=4000)  # held-out digits every CNN is scored on
    lr: list[float] = setting([1e-4, 1e-2], gt=0, min_len=2, max_len=2)
    weight_decay: list[float] = setting([1e-6, 1e-2], gt=0, min_len=2, max_len=2)
    init_scale: list[float] = setting([0.3, 1.5], gt=0, min_len=2, max_len=2)
    dropout: list[float] = setting([0.0, 0.5], ge=0, lt=1, min_len=2, max_len=2)
    label_noise: list[float] = setting([0.0, 0.5], ge=0, le=1, min_len=2, max_len=2)
    train_fraction: list[float] = setting([0.05, 1.0], gt=0, le=1, min_len=2, max_len=2)
    steps: list[int] = setting([100, 200, 400], gt=0, min_len=1)
    batch_size: int = setting(32, gt=0, le=MAX_BATCH)
    checkpoints: int = setting(4, gt=0)  # snapshots per run, evenly spaced over its steps
    shard_size: int = setting(32, gt=0)  # runs per shard (a shard holds one architecture)
    chunk_size: int = setting(16, gt=0)  # runs trained at once
    threads_per_task: int = setting(1, ge=1)
    train: CnnTrainConfig = field(default_factory=CnnTrainConfig)

    def check(self) -> list[tuple[str, str]]:
        pairs = ("lr", "weight_decay", "init_scale", "dropout", "label_noise", "train_fraction")
        return [(k, "needs [low, high] with low <= high") for k in pairs if getattr(self, k)[0] > getattr(self, k)[1]]


@dataclass(frozen=True)
class Corruption:
    """The target domain of domain adaptation (:func:`pipeline.zoo.adapt_zoo.corrupt_digits`), applied
    to ``28 x 28`` digits in ``[0, 1]`` in this order: rotation by ``rotation`` degrees (plus a
    uniform jitter of ``± jitter`` per image), a left-right flip if ``flip``, a Gaussian blur of std
    ``blur`` pixels (0: none), ``contrast * x + brightness``, Gaussian noise of std ``noise``,
    clipped to ``[0, 1]``. The section ``adapt.corruption`` and the library's argument alike."""

    rotation: float = setting(30.0, ge=-180, le=180)  # degrees
    jitter: float = setting(10.0, ge=0, le=180)  # +- degrees per image, uniform
    flip: bool = False  # left-right
    blur: float = setting(1.0, ge=0)  # Gaussian std in pixels (0: none)
    contrast: float = setting(0.6, gt=0)
    brightness: float = setting(0.2, ge=-1, le=1)
    noise: float = setting(0.1, ge=0)  # Gaussian std, pixels in [0, 1]


@dataclass(frozen=True)
class AdaptZooConfig:
    """Binary MLP classifiers of digit pairs (:mod:`pipeline.zoo.adapt_zoo`)."""

    n_nets: int = setting(2000, gt=0)
    n_val: int = setting(200, gt=0)
    n_test: int = setting(200, gt=0)  # test nets of known pairs; every net of a novel pair is a test net too
    novel_pairs: int = setting(5, ge=0, le=44)  # digit pairs (of 45) that only test nets have
    hidden: list[int] = setting([32, 32], gt=0, le=MAX_WIDTH, min_len=1)
    pool: int = setting(4, one_of=(1, 2, 4, 7, 14))  # 28 x 28 -> (28 / pool)^2 inputs
    steps: int = setting(300, gt=0)
    lr: float = setting(3e-3, gt=0)
    batch_size: int = setting(32, gt=0, le=MAX_BATCH)
    images_per_digit: int = setting(256, gt=0, le=300)  # training images of each digit in a pair's bank
    digits_test: int = setting(1000, ge=100, le=2000)  # held-out digits every net is scored on
    finetune_images: int = setting(16, ge=2)  # labelled target images per net (half of each digit)
    finetune_steps: int = setting(50, gt=0)
    finetune_lr: float = setting(1e-3, gt=0)
    shard_size: int = setting(500, gt=0)
    threads_per_task: int = setting(1, ge=1)

    def check(self) -> list[tuple[str, str]]:
        out = []
        if self.finetune_images % 2:
            out.append(("finetune_images", f"{self.finetune_images} must be even (half of each digit)"))
        novel_nets = math.ceil(self.n_nets * self.novel_pairs / 45)  # nets cycle through the 45 pairs
        if self.n_val + self.n_test + novel_nets >= self.n_nets:
            msg = f"{self.n_nets} nets: none left for training after {self.n_val} + {self.n_test} + ~{novel_nets} novel"
            out.append(("n_nets", msg))
        return out


@dataclass(frozen=True)
class AdaptConfig(ModelSections):
    """Domain adaptation (:mod:`pipeline.tasks.adaptation`): every listed model's equivariant
    editor maps a source-domain classifier to one for the corrupted target domain."""

    zoo: AdaptZooConfig = field(default_factory=AdaptZooConfig)
    corruption: Corruption = field(default_factory=Corruption)
    models: list[str] = setting(["mlp", "mlp_perm", "dwsnet"], unique=True, min_len=1)
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    epochs: int = setting(10, gt=0)
    n_train: int = setting(0, ge=0)  # n training nets drawn at random (0: all); val and test are always whole
    batch_size: int = setting(32, gt=0, le=MAX_BATCH)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    warmup_steps: int = setting(50, ge=0)
    grad_clip: float = setting(10.0, gt=0, allow_inf=True)  # .inf: no clipping
    compile: bool = False  # torch.compile the model (pipeline.train.compile_model)
    init_scale: float = setting(1e-2, gt=0)  # initial residual scale of every adapter
    threads_per_task: int = setting(1, ge=1)
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class L2OTaskConfig:
    """A task of learning to optimize (:func:`pipeline.tasks.l2o.make_task`): ReLU MLPs
    ``inputs -> hidden -> 10`` or CNNs (``kind``) of offline images, average-pooled by ``pool``."""

    source: str = setting("digits_offline", one_of=("digits_offline", "mnist_offline"))
    pool: int = setting(1, one_of=(1, 2, 4, 7, 8, 14))  # must divide the side (8 digits, 28 MNIST)
    hidden: list[int] = setting([32], gt=0, le=MAX_WIDTH, min_len=1)  # a CNN: channels of each conv
    n_test: int = setting(497, gt=0)  # held-out images the trained nets are scored on
    batch_size: int = setting(64, gt=0, le=MAX_BATCH)
    kind: str = setting("mlp", one_of=("mlp", "cnn"))  # the optimizees
    kernel: int = setting(3, one_of=(1, 3, 5, 7))  # a CNN's square kernels (stride 2)

    def check(self) -> list[tuple[str, str]]:
        side, n = (8, 1797) if self.source == "digits_offline" else (28, 5000)
        out = [] if side % self.pool == 0 else [("pool", f"{self.pool} does not divide the {side}-pixel side")]
        if self.n_test >= n:
            out.append(("n_test", f"{self.n_test} leaves no training image of {self.source}'s {n}"))
        return out


@dataclass(frozen=True)
class L2OConfig:
    """Learning to optimize (:mod:`pipeline.tasks.l2o`): learned optimizers meta-trained on
    ``meta_task`` and tested there and on ``test_task``, beside lr-tuned Adam and SGD."""

    optimizers: list[str] = setting(
        ["ng_t", "ng_gnn", "ff", "adam", "sgd"], one_of=("adam", "sgd", "ff", "ng_gnn", "ng_t"), min_len=1, unique=True
    )
    seeds: list[int] = setting([0, 1, 2], ge=0, le=MAX_SEED, min_len=1, unique=True)
    meta_task: L2OTaskConfig = field(default_factory=L2OTaskConfig)
    test_task: L2OTaskConfig = field(
        default_factory=lambda: L2OTaskConfig(source="mnist_offline", pool=2, hidden=[64], n_test=1000)
    )
    outer_steps: int = setting(100, gt=0)  # meta-training updates of the optimizer
    unroll: int = setting(10, gt=0)  # optimizee steps per truncated unroll
    horizon: int = setting(200, gt=0)  # optimizee steps before the meta-training nets are re-drawn
    n_optimizees: int = setting(4, gt=0)  # nets per unroll
    meta_lr: float = setting(1e-3, gt=0)
    scale: float = setting(1e-2, gt=0)  # output scale of a learned update
    grad_clip: float = setting(1.0, gt=0, allow_inf=True)
    ff_hidden: int = setting(32, gt=0, le=MAX_WIDTH)  # the FF optimizer's per-parameter MLP width
    graph_hidden: int = setting(16, gt=0, le=MAX_WIDTH)  # the graph optimizers' encoder and MLP width
    graph_layers: int = setting(2, gt=0)
    heads: int = setting(4, gt=0)  # NG-T's; must divide graph_hidden
    eval_steps: int = setting(200, gt=0)  # steps of every evaluation net
    eval_nets: int = setting(4, gt=0)  # evaluation nets per task and seed
    baseline_lrs: list[float] = setting([1e-3, 3e-3, 1e-2, 3e-2, 1e-1], gt=0, min_len=1, unique=True)
    momentum: float = setting(0.9, ge=0, lt=1)  # SGD's heavy ball
    threads_per_task: int = setting(1, ge=1)

    def check(self) -> list[tuple[str, str]]:
        out = []
        graph = [o for o in self.optimizers if o in ("ng_gnn", "ng_t")]
        if graph and len(self.meta_task.hidden) != len(self.test_task.hidden):
            msg = f"{graph} run on nets of one depth: as many hidden layers as meta_task.hidden"
            out.append(("test_task.hidden", msg))
        meta_k, test_k = ((t.kernel if t.kind == "cnn" else 1) for t in (self.meta_task, self.test_task))
        if graph and test_k > meta_k:
            msg = f"{graph} read kernels up to the meta task's ({meta_k} x {meta_k}): {test_k} x {test_k} do not fit"
            out.append(("test_task.kernel" if self.test_task.kind == self.meta_task.kind else "test_task.kind", msg))
        if "ng_t" in self.optimizers and self.graph_hidden % self.heads:
            out.append(("heads", f"{self.heads} does not divide graph_hidden {self.graph_hidden}"))
        return out


@dataclass(frozen=True)
class RayConfig:
    """Where tasks run. ``address``: ``""`` = ``RAY_ADDRESS`` if set, else a local cluster of the
    stage's own (``num_cpus`` caps it); ``"auto"`` = the ``ray start`` cluster on this machine;
    ``"host:port"`` / ``"ray://host:port"`` = that cluster. ``device``: ``auto`` = the GPU Ray
    assigned to the task, else the CPU; ``cpu``; ``cuda`` (needs ``gpus_per_task > 0``).
    ``wait_for_nodes_s``: how long a stage waits for a node that can run its tasks (an
    autoscaler starting one) before it refuses; 0 refuses at once."""

    address: str = ""
    num_cpus: int = setting(0, ge=0)  # 0: every core
    device: str = "auto"
    gpus_per_task: float = setting(0.0, ge=0)
    max_retries: int = setting(2, ge=0)  # Ray reads -1 as "retry forever"
    wait_for_nodes_s: float = setting(0.0, ge=0)  # an autoscaling cluster: wait this long for a node that fits

    def check(self) -> list[tuple[str, str]]:
        if self.device == "cuda" and self.gpus_per_task <= 0:
            return [("device", "cuda needs ray.gpus_per_task > 0 (Ray hides the GPUs from tasks that reserve none)")]
        return []


@dataclass(frozen=True)
class MLflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "metazoo"
    # attempts per MLflow call (a locked store, a restarting server) before it is reported
    retries: int = setting(3, ge=1)


@dataclass(frozen=True)
class Params:
    profile: str = "default"
    seed: int = setting(0, ge=0, le=MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    kan: KanConfig = field(default_factory=KanConfig)
    cnn: CnnConfig = field(default_factory=CnnConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    l2o: L2OConfig = field(default_factory=L2OConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (int -> float allowed)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported annotation {tp}")


def settings_from_dict(cls: type, raw: Any, path: str) -> Any:
    """``cls(**raw)`` checked by the same rules as ``params.yaml`` (a model file's card, say);
    :class:`ConfigError` names ``path.key`` and what is allowed."""
    return _coerce(raw, cls, path)


def _build(cls: type, raw: dict, path: str) -> Any:
    """``cls(**raw)`` with every key known, typed and within its field's :class:`Rule`; then the
    cross-field rules of ``cls.check()`` (``[(field, message)]``, optional)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    model_keys: tuple[str, ...] = ()
    if issubclass(cls, ModelSections):
        from pipeline.models import model_names, settings_type

        fields.pop("model_settings")
        model_keys = model_names()
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        base, sep, variant = str(key).partition("@")
        if key in fields:
            kwargs[key] = _coerce(value, hints[key], where)
            _check(kwargs[key], fields[key].metadata.get("rule", _ANY), where)
        elif key in model_keys:
            sections[key] = _coerce(value, settings_type(key), where)
        elif sep and base in model_keys and variant.isidentifier():
            # a settings variant: overrides of the base model's section (its defaults if none)
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of {base} settings, got {type(value).__name__}")
            base_raw = raw.get(base) if isinstance(raw.get(base), dict) else {}
            sections[key] = _coerce(base_raw | value, settings_type(base), where)
        else:
            allowed = ", ".join(sorted(fields))
            extra = f"; or a model's section: {', '.join(model_keys)} (or <model>@<variant>)" if model_keys else ""
            raise ConfigError(f"{where}: unknown key (allowed: {allowed}{extra})")
    if model_keys:
        kwargs["model_settings"] = sections
    obj = cls(**kwargs)
    for key, msg in obj.check() if hasattr(obj, "check") else ():
        raise ConfigError(f"{path}.{key}: {msg}" if path else f"{key}: {msg}")
    return obj


def params_from_dict(raw: dict | None) -> Params:
    """Validate a parsed ``params.yaml``; missing keys take the dataclass defaults."""
    params = _build(Params, raw or {}, "")
    validate(params)
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            where = f"{path}.{name}" if path else name
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in lines:
                    first = lines[(key.tag, key.value)]
                    raise ConfigError(f"{where}: written twice (lines {first} and {line}); keep one")
                lines[(key.tag, key.value)] = line
            _refuse_duplicate_keys(value, where, seen)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``. Raises :class:`ConfigError` naming the bad key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the params file ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return params_from_dict(raw)


def validate(p: Params) -> None:
    """Rules across sections or against other modules' registries (a field's own range is
    declared next to it, :func:`setting`)."""
    from pipeline.augment import AUGMENTATIONS
    from pipeline.data import OFFLINE_SOURCES
    from pipeline.device import DEVICES
    from pipeline.zoo.siren import INIT_VARIANTS

    allowed_augment = f"'none', or one or more of {AUGMENTATIONS} joined by '+'"
    checks = [
        (p.data.source in OFFLINE_SOURCES, "data.source", f"must be one of {OFFLINE_SOURCES}"),
        (p.zoo.init in INIT_VARIANTS, "zoo.init", f"must be one of {INIT_VARIANTS}"),
        (p.ray.device in DEVICES, "ray.device", f"must be one of {DEVICES}"),
        (_known_augment(p.train.augment), "train.augment", allowed_augment),
        (_known_augment(p.edit.augment), "edit.augment", allowed_augment),
        # the editing targets are the dilated original images: a warped input would not match them
        ("inr_affine" not in p.edit.augment, "edit.augment", "inr_affine warps the image; editing targets are fixed"),
    ]
    for key, sizes in (("data", p.data), ("kan.inr", p.kan.inr)):
        total, available = (
            sizes.n_train + sizes.n_val + sizes.n_test,
            SOURCE_SIZES.get(p.data.source if key == "data" else "mnist_offline"),
        )
        ok = available is None or total <= available
        checks.append(
            (ok, f"{key}.n_train", f"n_train + n_val + n_test = {total} exceeds the {available} images of the source")
        )
    kan_layers = max(len(p.kan.inr.hidden), len(p.kan.classifier.hidden)) + 1
    for key, section, n_layers in (
        ("train", p.train, len(p.zoo.hidden) + 1),
        ("edit", p.edit, len(p.zoo.hidden) + 1),
        ("kan.train", p.kan.train, kan_layers),
        ("kan.forward", p.kan.forward, kan_layers),
        ("adapt", p.adapt, len(p.adapt.zoo.hidden) + 1),
    ):
        graph_only, probes, editor = key == "kan.forward", key in ("train", "edit"), key in ("edit", "adapt")
        checks += _model_checks(key, section, n_layers, graph_only, probes, editor)
    # CNN zoos: the homogeneous architecture has 3 convs + head; heterogeneous ones up to CNN_MAX_CONV
    from pipeline.models import model_module, model_names, split_model_name
    from pipeline.zoo.cnn_zoo import CNN_MAX_CONV

    cnn = p.cnn.train
    checks += _model_checks("cnn.train", cnn, 4, False, False)
    hetero = dataclasses.replace(cnn, models=cnn.heterogeneous_models)
    checks += _model_checks("cnn.train", hetero, CNN_MAX_CONV + 1, False, False, list_key="heterogeneous_models")
    any_arch = [m for m in model_names() if getattr(model_module(m), "ANY_ARCHITECTURE", False)]
    for m in cnn.heterogeneous_models:
        ok = split_model_name(m)[0] in any_arch and not split_model_name(m)[1]
        checks.append((ok, "cnn.train.heterogeneous_models", f"{m!r} reads one architecture only; use {any_arch}"))
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{key}: {msg}")


def _known_augment(name: str) -> bool:
    from pipeline.augment import parse_augment

    try:
        parse_augment(name)
    except ValueError:
        return False
    return True


def _model_checks(
    key: str,
    section: ModelSections,
    n_layers: int,
    graph_only: bool,
    probes: bool,
    editor: bool = False,
    list_key: str = "models",
) -> list[tuple[bool, str, str]]:
    """Every listed model exists (and reads graphs where ``graph_only``, has an editor where
    ``editor``); a graph model's readout sees only output neurons, so it needs
    ``layers >= n_layers`` to reach the input layer; probe features need a SIREN zoo (``probes``)."""
    from pipeline.models import model_module, model_names, settings_key, split_model_name

    checks = []
    for m in section.models:
        base, permuted = split_model_name(m)
        if base not in model_names():
            known = f"{model_names()} (optionally + '_perm', + '@<variant>')"
            checks.append((False, f"{key}.{list_key}", f"{m!r} is not one of {known}"))
            continue
        skey = settings_key(m)
        if skey != base and skey not in section.model_settings:
            checks.append((False, f"{key}.{list_key}", f"{m!r} needs its settings section {key}.{skey}"))
            continue
        graph = model_module(base).INPUT_KIND == "graph"
        checks.append((graph or not graph_only, f"{key}.{list_key}", f"{m!r}: only graph models run here"))
        no_perm = f"{m!r}: permutation augmentation is for flat models; graph models are permutation invariant"
        checks.append((not (graph and permuted), f"{key}.{list_key}", no_perm))
        if editor:
            ok = hasattr(model_module(base), "build_editor")
            checks.append((ok, f"{key}.{list_key}", f"{m!r} has no editor (only models with one edit)"))
        s, base_s = section.settings(m), section.settings(base)
        # a bad value is named where it was written: the variant's own section, or the base one it inherits
        where = {
            f: f"{key}.{skey if skey != base and getattr(s, f) != getattr(base_s, f) else base}.{f}"
            for f in ("layers", "probe_features")
            if hasattr(s, f)
        }
        if graph and hasattr(s, "layers"):
            checks.append((s.layers >= n_layers, where["layers"], f"must be >= {n_layers} (parameter layers)"))
        if not probes and getattr(s, "probe_features", 0) > 0:
            fix = "probe features need a SIREN zoo (use 0, or a model without probes)"
            checks.append((False, where["probe_features"], fix))
    return checks


def to_flat_dict(p: Params) -> dict[str, Any]:
    """``{"zoo.steps": 300, ...}`` for logging as MLflow params."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            elif f.name == "model_settings":  # logged under the model's own key: train.ng_gnn.hidden
                for model, settings in obj.settings_by_model().items():
                    walk(settings, f"{prefix}{model}.")
            else:
                out[f"{prefix}{f.name}"] = v

    walk(p, "")
    return out
