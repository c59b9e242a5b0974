"""``params.yaml`` -> typed, validated settings.

Every section is a frozen dataclass. :func:`load_params` walks the YAML against the
dataclass fields and fails before any work is done, naming the offending key
(``train.ng_gnn.hiden: unknown key``, ``zoo.steps: expected int, got str``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A key of ``params.yaml`` is unknown, missing or of the wrong type."""


class ModelSections:
    """Base of a section whose extra keys are model names (``train.ng_gnn: {...}``).

    Each such key is validated against that model's ``Settings`` dataclass
    (:mod:`pipeline.models`) and kept in ``model_settings``; a model listed in ``models`` without
    a section gets its ``Settings()`` defaults. A new model therefore needs no change here.
    """

    def settings(self, name: str) -> Any:
        """The settings of model ``name`` (a ``_perm`` suffix reads the base model's section)."""
        from pipeline.models import settings_type, split_model_name

        base, _ = split_model_name(name)
        return self.model_settings.get(base) or settings_type(base)()

    def settings_by_model(self) -> dict[str, Any]:
        """``{base model name: settings}`` for every model in ``models``."""
        from pipeline.models import split_model_name

        return {split_model_name(m)[0]: self.settings(m) for m in self.models}


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist_offline"
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500


@dataclass(frozen=True)
class ZooConfig:
    family: str = "siren"
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    omega0: float = 30.0
    init: str = "standard"
    steps: int = 300
    lr: float = 5e-4
    target_psnr: float = 50.0
    psnr_floor: float = 20.0
    inrs_per_train_image: int = 1
    shard_size: int = 250
    chunk_size: int = 16
    threads_per_task: int = 1


@dataclass(frozen=True)
class TrainConfig(ModelSections):
    models: list[str] = field(default_factory=lambda: ["mlp", "ng_gnn"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    grad_clip: float = 10.0
    augment: str = "none"
    threads_per_task: int = 1
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class EditConfig(ModelSections):
    """INR editing (dilation, :mod:`pipeline.tasks.editing`) with each model's equivariant editor."""

    models: list[str] = field(default_factory=lambda: ["dwsnet", "nfn", "ng_gnn", "ng_t"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 10
    n_train: int = 0  # n training INRs drawn at random (0: all); val and test are always whole
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 10.0
    init_scale: float = 1e-3  # initial residual scale of every editor
    augment: str = "sign_flip"
    threads_per_task: int = 1
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class KanInrConfig:
    hidden: list[int] = field(default_factory=lambda: [8, 8])
    grid: int = 5
    order: int = 3
    steps: int = 300
    lr: float = 2e-2
    n_train: int = 2000
    n_val: int = 250
    n_test: int = 250


@dataclass(frozen=True)
class KanClassifierConfig:
    hidden: list[int] = field(default_factory=lambda: [8])
    grid: int = 5
    order: int = 3
    n_train: int = 1500
    n_val: int = 250
    n_test: int = 250
    digits_test: int = 500
    lr: list[float] = field(default_factory=lambda: [1e-3, 1e-1])
    weight_decay: list[float] = field(default_factory=lambda: [1e-5, 1e-1])
    steps: list[int] = field(default_factory=lambda: [50, 100, 200])
    label_noise: list[float] = field(default_factory=lambda: [0.0, 0.5])
    train_fraction: list[float] = field(default_factory=lambda: [0.05, 1.0])


@dataclass(frozen=True)
class KanTrainConfig(ModelSections):
    models: list[str] = field(default_factory=lambda: ["mlp", "mlp_perm", "ng_gnn", "ws_kan"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    grad_clip: float = 10.0
    threads_per_task: int = 1
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class KanForwardConfig(ModelSections):
    """The expressivity check (:mod:`pipeline.kan_forward`): fresh query points every step."""

    models: list[str] = field(default_factory=lambda: ["ws_kan"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 2000
    kans_per_step: int = 32
    points_per_kan: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    eval_every: int = 250
    eval_points: int = 16
    threads_per_task: int = 1
    model_settings: dict[str, Any] = field(default_factory=dict)  # from keys named after models


@dataclass(frozen=True)
class KanConfig:
    inr: KanInrConfig = field(default_factory=KanInrConfig)
    classifier: KanClassifierConfig = field(default_factory=KanClassifierConfig)
    shard_size: int = 250
    chunk_size: int = 16
    threads_per_task: int = 1
    train: KanTrainConfig = field(default_factory=KanTrainConfig)
    forward: KanForwardConfig = field(default_factory=KanForwardConfig)


@dataclass(frozen=True)
class RayConfig:
    """Where tasks run. ``address``: ``""`` = ``RAY_ADDRESS`` if set, else a local cluster of the
    stage's own (``num_cpus`` caps it); ``"auto"`` = the ``ray start`` cluster on this machine;
    ``"host:port"`` / ``"ray://host:port"`` = that cluster. ``device``: ``auto`` = the GPU Ray
    assigned to the task, else the CPU; ``cpu``; ``cuda`` (needs ``gpus_per_task > 0``)."""

    address: str = ""
    num_cpus: int = 0
    device: str = "auto"
    gpus_per_task: float = 0.0
    max_retries: int = 2


@dataclass(frozen=True)
class MLflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "metazoo"
    retries: int = 3  # attempts per MLflow call (a locked store, a restarting server) before it is reported


@dataclass(frozen=True)
class Params:
    profile: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    kan: KanConfig = field(default_factory=KanConfig)
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


def _build(cls: type, raw: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    model_keys: tuple[str, ...] = ()
    if issubclass(cls, ModelSections):
        from pipeline.models import model_names, settings_type

        names.discard("model_settings")
        model_keys = model_names()
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key in names:
            kwargs[key] = _coerce(value, hints[key], where)
        elif key in model_keys:
            sections[key] = _coerce(value, settings_type(key), where)
        else:
            allowed = ", ".join(sorted(names))
            extra = f"; or a model's section: {', '.join(model_keys)}" if model_keys else ""
            raise ConfigError(f"{where}: unknown key (allowed: {allowed}{extra})")
    if model_keys:
        kwargs["model_settings"] = sections
    return cls(**kwargs)


def params_from_dict(raw: dict | None) -> Params:
    """Validate a parsed ``params.yaml``; missing keys take the dataclass defaults."""
    params = _build(Params, raw or {}, "")
    validate(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``. Raises :class:`ConfigError` naming the bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return params_from_dict(raw)


def validate(p: Params) -> None:
    """Value checks that types alone cannot express."""
    from pipeline.data import OFFLINE_SOURCES
    from pipeline.device import DEVICES
    from pipeline.zoo.siren import INIT_VARIANTS

    checks = [
        (p.data.source in OFFLINE_SOURCES, "data.source", f"must be one of {OFFLINE_SOURCES}"),
        (p.zoo.family == "siren", "zoo.family", "only 'siren' is implemented"),
        (p.zoo.init in INIT_VARIANTS, "zoo.init", f"must be one of {INIT_VARIANTS}"),
        (len(p.zoo.hidden) >= 1 and min(p.zoo.hidden) > 0, "zoo.hidden", "needs >= 1 positive width"),
        (p.zoo.steps > 0, "zoo.steps", "must be > 0"),
        (p.zoo.lr > 0, "zoo.lr", "must be > 0"),
        (p.zoo.shard_size > 0, "zoo.shard_size", "must be > 0"),
        (p.zoo.chunk_size > 0, "zoo.chunk_size", "must be > 0"),
        (p.zoo.inrs_per_train_image >= 1, "zoo.inrs_per_train_image", "must be >= 1"),
        (min(p.data.n_train, p.data.n_val, p.data.n_test) > 0, "data.n_*", "split sizes must be > 0"),
        (len(p.train.seeds) >= 1, "train.seeds", "needs at least one seed"),
        (p.train.epochs > 0, "train.epochs", "must be > 0"),
        (p.train.batch_size > 0, "train.batch_size", "must be > 0"),
        (p.ray.gpus_per_task >= 0, "ray.gpus_per_task", "must be >= 0"),
        (p.ray.num_cpus >= 0, "ray.num_cpus", "must be >= 0 (0: every core)"),
        (p.ray.max_retries >= 0, "ray.max_retries", "must be >= 0"),
        (p.ray.device in DEVICES, "ray.device", f"must be one of {DEVICES}"),
        (
            p.ray.device != "cuda" or p.ray.gpus_per_task > 0,
            "ray.device",
            "cuda needs ray.gpus_per_task > 0 (Ray hides the GPUs from tasks that reserve none)",
        ),
        (p.mlflow.retries >= 1, "mlflow.retries", "must be >= 1"),
    ]
    from pipeline.augment import AUGMENTATIONS

    checks.append((p.train.augment in AUGMENTATIONS, "train.augment", f"must be one of {AUGMENTATIONS}"))
    checks.append((p.edit.augment in AUGMENTATIONS, "edit.augment", f"must be one of {AUGMENTATIONS}"))
    kan_layers = max(len(p.kan.inr.hidden), len(p.kan.classifier.hidden)) + 1
    kf = p.kan.forward
    for key, section, n_layers in (
        ("train", p.train, len(p.zoo.hidden) + 1),
        ("edit", p.edit, len(p.zoo.hidden) + 1),
        ("kan.train", p.kan.train, kan_layers),
        ("kan.forward", kf, kan_layers),
    ):
        graph_only, probes, editor = key == "kan.forward", key in ("train", "edit"), key == "edit"
        checks += _model_checks(key, section, n_layers, graph_only, probes, editor)
    ed = p.edit
    checks += [
        (len(ed.seeds) >= 1 and ed.epochs > 0 and ed.batch_size > 0, "edit", "needs seeds, epochs > 0, batch > 0"),
        (ed.n_train >= 0, "edit.n_train", "must be >= 0 (0: every training INR)"),
        (ed.init_scale > 0 and ed.lr > 0, "edit.init_scale/lr", "must be > 0"),
    ]
    checks += [
        (len(kf.seeds) >= 1, "kan.forward.seeds", "needs at least one seed"),
        (kf.steps > 0 and kf.eval_every > 0, "kan.forward.steps", "steps and eval_every must be > 0"),
        (min(kf.kans_per_step, kf.points_per_kan, kf.eval_points) > 0, "kan.forward.*_points", "must be > 0"),
        (kf.lr > 0, "kan.forward.lr", "must be > 0"),
    ]
    kc, kt = p.kan.classifier, p.kan.train
    for key, pair in (("lr", kc.lr), ("weight_decay", kc.weight_decay)):
        checks.append((len(pair) == 2 and 0 < pair[0] <= pair[1], f"kan.classifier.{key}", "needs [low, high] > 0"))
    for key, pair in (("label_noise", kc.label_noise), ("train_fraction", kc.train_fraction)):
        ok = len(pair) == 2 and 0 <= pair[0] <= pair[1] <= 1
        checks.append((ok, f"kan.classifier.{key}", "needs [low, high] in [0, 1]"))
    checks += [
        (len(kc.steps) >= 1 and min(kc.steps) > 0, "kan.classifier.steps", "needs >= 1 positive step count"),
        (p.kan.inr.steps > 0, "kan.inr.steps", "must be > 0"),
        (p.kan.inr.lr > 0, "kan.inr.lr", "must be > 0"),
        (min(p.kan.inr.n_train, p.kan.inr.n_val, p.kan.inr.n_test) > 0, "kan.inr.n_*", "split sizes must be > 0"),
        (min(kc.n_train, kc.n_val, kc.n_test) > 0, "kan.classifier.n_*", "split sizes must be > 0"),
        (p.kan.inr.grid > 0 and kc.grid > 0, "kan.*.grid", "must be > 0"),
        (p.kan.inr.order >= 0 and kc.order >= 0, "kan.*.order", "must be >= 0"),
        (min(p.kan.shard_size, p.kan.chunk_size) > 0, "kan.shard_size/chunk_size", "must be > 0"),
        (len(kt.seeds) >= 1 and kt.epochs > 0 and kt.batch_size > 0, "kan.train", "needs seeds, epochs > 0, batch > 0"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{key}: {msg}")


def _model_checks(
    key: str, section: ModelSections, n_layers: int, graph_only: bool, probes: bool, editor: bool = False
) -> list[tuple[bool, str, str]]:
    """Every listed model exists (and reads graphs where ``graph_only``, has an editor where
    ``editor``); a graph model's readout sees only output neurons, so it needs
    ``layers >= n_layers`` to reach the input layer; probe features need a SIREN zoo (``probes``)."""
    from pipeline.models import model_module, model_names, split_model_name

    checks = []
    for m in section.models:
        base, _ = split_model_name(m)
        if base not in model_names():
            checks.append((False, f"{key}.models", f"{m!r} is not one of {model_names()} (optionally + '_perm')"))
            continue
        graph = model_module(base).INPUT_KIND == "graph"
        checks.append((graph or not graph_only, f"{key}.models", f"{m!r}: only graph models run here"))
        if editor:
            ok = hasattr(model_module(base), "build_editor") and base == m
            checks.append((ok, f"{key}.models", f"{m!r} has no editor (models with one edit; no '_perm')"))
        s = section.settings(base)
        if graph and hasattr(s, "layers"):
            checks.append((s.layers >= n_layers, f"{key}.{base}.layers", f"must be >= {n_layers} (parameter layers)"))
        if not probes and getattr(s, "probe_features", 0) > 0:
            checks.append((False, f"{key}.{base}.probe_features", "probe features need a SIREN zoo; use 0"))
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
