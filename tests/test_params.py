"""Every parameter of ``params.yaml`` is checked at load: one table of bad values, each refused
with a :class:`ConfigError` that names the key's dotted path and what it allows."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import ConfigError, load_params, params_from_dict
from pipeline.models import model_names, settings_type

REPO = Path(__file__).parents[1]
PARAMS_TEXT = (REPO / "params.yaml").read_text()
PARAMS = yaml.safe_load(PARAMS_TEXT)
NAN, INF = float("nan"), float("inf")

SECTIONS = ("train", "edit", "kan.train", "kan.forward")  # the sections that list models


def _get(dotted: str) -> Any:
    node = PARAMS
    for key in dotted.split("."):
        node = node[key]
    return node


# every (section, model) with its own block in params.yaml: all eight models appear
MODEL_BLOCKS = [(s, m) for s in SECTIONS for m in _get(s) if m in model_names()]


def _duplicated(anchor: str, extra: str) -> tuple[str, int]:
    """The real params.yaml with ``extra`` inserted right after the first line starting with
    ``anchor``, and that line's number (the duplicate is on the next)."""
    lines = PARAMS_TEXT.splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.startswith(anchor))
    return "".join(lines[: n + 1] + [extra + "\n"] + lines[n + 1 :]), n + 1


def _dup_case(anchor: str, extra: str, key: str):
    text, line = _duplicated(anchor, extra)
    return pytest.param(text, key, f"written twice (lines {line} and {line + 1})", id=f"twice-{key}")


def _case(change: dict[str, Any], key: str, allowed: str, tag: str = ""):
    return pytest.param(change, key, allowed, id=f"{key}{'-' + tag if tag else ''}")


CASES = [
    # (overrides of the real params.yaml, or raw YAML text; key in the message; what it allows)
    _case({"train.nfn.mode": "hpn"}, "train.nfn.mode", "'np', 'hnp'"),
    _case({"edit.nfn.mode": "NP"}, "edit.nfn.mode", "'np', 'hnp'"),
    _case({"train.ng_gnn.hidden": -3}, "train.ng_gnn.hidden", "(0, 4096]"),
    _case({"train.ng_gnn.hidden": 10**7}, "train.ng_gnn.hidden", "(0, 4096]", "huge"),
    _case({"train.ng_t.hidden": 18, "train.ng_t.heads": 4}, "train.ng_t.hidden", "multiple of heads (4)"),
    _case({"edit.ng_t.hidden": 10, "edit.ng_t.heads": 4}, "edit.ng_t.hidden", "multiple of heads (4)"),
    _case({"train.ng_t.heads": 0}, "train.ng_t.heads", "(0, 4096]"),
    _case({"train.lr": -1}, "train.lr", "> 0"),
    _case({"train.lr": NAN}, "train.lr", "finite"),
    _case({"train.lr": INF}, "train.lr", "finite", "inf"),
    _case({"train.grad_clip": 0}, "train.grad_clip", "> 0"),
    _case({"train.grad_clip": -INF}, "train.grad_clip", "or .inf"),
    _case({"ray.max_retries": -1}, "ray.max_retries", ">= 0"),
    _case({"ray.num_cpus": -1}, "ray.num_cpus", ">= 0"),
    _case({"ray.gpus_per_task": -0.5}, "ray.gpus_per_task", ">= 0"),
    _case({"ray.gpus_per_task": INF}, "ray.gpus_per_task", "finite"),
    _case({"ray.device": "cuda", "ray.gpus_per_task": 0.0}, "ray.device", "gpus_per_task > 0"),
    _case({"ray.device": "tpu"}, "ray.device", "cuda"),
    _case({"kan.inr.order": 8}, "kan.inr.order", "[0, 7]"),
    _case({"kan.inr.order": -1}, "kan.inr.order", "[0, 7]", "negative"),
    _case({"kan.classifier.order": 9}, "kan.classifier.order", "[0, 7]"),
    _case({"kan.inr.grid": 0}, "kan.inr.grid", "> 0"),
    _case({"kan.classifier.grid": -2}, "kan.classifier.grid", "> 0"),
    _case({"zoo.psnr_floor": NAN}, "zoo.psnr_floor", "finite"),
    _case({"zoo.psnr_floor": 60.0}, "zoo.psnr_floor", "< target_psnr"),
    _case({"zoo.target_psnr": INF}, "zoo.target_psnr", "finite"),
    _case({"zoo.target_psnr": 0}, "zoo.target_psnr", "> 0"),
    _case({"zoo.omega0": 0}, "zoo.omega0", "> 0"),
    _case({"zoo.hidden": []}, "zoo.hidden", "at least 1"),
    _case({"zoo.hidden": [32, 0]}, "zoo.hidden[1]", "(0, 4096]"),
    _case({"zoo.steps": 0}, "zoo.steps", "> 0"),
    _case({"zoo.inrs_per_train_image": 0}, "zoo.inrs_per_train_image", ">= 1"),
    _case({"zoo.family": "cnn"}, "zoo.family", "'siren'"),
    _case({"zoo.init": "xavier"}, "zoo.init", "standard"),
    _case({"data.source": "cifar10"}, "data.source", "mnist_offline"),
    _case({"data.n_val": 0}, "data.n_val", "> 0"),
    _case({"train.augment": "rotate"}, "train.augment", "sign_flip"),
    _case({"train.augment": "sign_flip+sign_flip"}, "train.augment", "joined by '+'", "repeated"),
    _case({"train.augment": "none+sign_flip"}, "train.augment", "joined by '+'", "none_joined"),
    _case({"edit.augment": "sign_flip+inr_affine"}, "edit.augment", "editing targets are fixed"),
    _case({"train.mlp.augment": "rotate"}, "train.mlp.augment", "'sign_flip+inr_affine'"),
    _case(
        {"train.models": ["probe_mlp"], "train.probe_mlp": {"probe_features": 0}},
        "train.probe_mlp.probe_features",
        "> 0",
    ),
    _case({"kan.train.models": ["probe_mlp"]}, "kan.train.probe_mlp.probe_features", "need a SIREN zoo"),
    _case({"kan.classifier.digits_test": 1797}, "kan.classifier.digits_test", "[1, 1787]"),
    _case({"kan.classifier.digits_test": 1788}, "kan.classifier.digits_test", "[1, 1787]", "too_few_left"),
    _case({"kan.classifier.digits_test": 0}, "kan.classifier.digits_test", "[1, 1787]", "zero"),
    _case({"kan.classifier.lr": [NAN, 0.1]}, "kan.classifier.lr[0]", "finite"),
    _case({"kan.classifier.lr": [0.1]}, "kan.classifier.lr", "needs 2"),
    _case({"kan.classifier.weight_decay": [0.0, 0.1]}, "kan.classifier.weight_decay[0]", "> 0"),
    _case({"kan.classifier.label_noise": [0.5, 0.1]}, "kan.classifier.label_noise", "low <= high"),
    _case({"kan.classifier.train_fraction": [0.0, 1.5]}, "kan.classifier.train_fraction[1]", "[0, 1]"),
    _case({"kan.classifier.steps": []}, "kan.classifier.steps", "at least 1"),
    _case({"edit.init_scale": INF}, "edit.init_scale", "finite"),
    _case({"edit.n_train": -1}, "edit.n_train", ">= 0"),
    _case({"kan.forward.eval_every": 0}, "kan.forward.eval_every", "> 0"),
    _case({"kan.forward.kans_per_step": 0}, "kan.forward.kans_per_step", "> 0"),
    _case({"kan.shard_size": 0}, "kan.shard_size", "> 0"),
    _case({"mlflow.retries": 0}, "mlflow.retries", ">= 1"),
    _case({"seed": -1}, "seed", "[0, 2147483647]"),
    _case({"train.seeds": []}, "train.seeds", "at least 1"),
    _case({"train.ng_gnn.fourier_features": -1}, "train.ng_gnn.fourier_features", ">= 0"),
    _case({"train.nfn.fourier_scale": 0}, "train.nfn.fourier_scale", "> 0"),
    _case({"train.ng_gnn.fourier_scale": NAN}, "train.ng_gnn.fourier_scale", "finite"),
    _case({"train.ng_gnn.probe_features": -1}, "train.ng_gnn.probe_features", ">= 0"),
    _case({"train.ng_t.probe_features": -16}, "train.ng_t.probe_features", ">= 0"),
    # cross-section rules (validate)
    _case({"train.ng_gnn.layers": 2}, "train.ng_gnn.layers", ">= 3"),
    _case({"kan.train.ng_gnn.probe_features": 4}, "kan.train.ng_gnn.probe_features", "use 0"),
    _case({"kan.forward.models": ["mlp"]}, "kan.forward.models", "only graph models"),
    _case({"train.models": ["nosuchnet"]}, "train.models", "ng_gnn"),
    # the same rule in every section that has the key
    *[_case({f"{s}.threads_per_task": 0}, f"{s}.threads_per_task", ">= 1") for s in ("zoo", "kan", *SECTIONS)],
    *[_case({f"{s}.seeds": [0, 1, 0]}, f"{s}.seeds", "unique") for s in SECTIONS],
    *[_case({f"{s}.models": _get(f"{s}.models")[:1] * 2}, f"{s}.models", "unique") for s in SECTIONS],
    *[_case({f"{s}.lr": 0}, f"{s}.lr", "> 0") for s in (*SECTIONS, "zoo", "kan.inr")],
    *[_case({f"{s}.weight_decay": -1e-4}, f"{s}.weight_decay", ">= 0") for s in SECTIONS],
    *[_case({f"{s}.grad_clip": NAN}, f"{s}.grad_clip", "finite") for s in SECTIONS],
    *[_case({f"{s}.warmup_steps": -1}, f"{s}.warmup_steps", ">= 0") for s in ("train", "edit", "kan.train")],
    *[_case({f"{s}.epochs": 0}, f"{s}.epochs", "> 0") for s in ("train", "edit", "kan.train")],
    *[_case({f"{s}.batch_size": 0}, f"{s}.batch_size", "(0, 65536]") for s in ("train", "edit", "kan.train")],
    *[_case({f"{s}.{m}.dropout": 1.5}, f"{s}.{m}.dropout", "[0, 1)") for s, m in MODEL_BLOCKS],
    *[_case({f"{s}.{m}.dropout": -0.1}, f"{s}.{m}.dropout", "[0, 1)", "negative") for s, m in MODEL_BLOCKS],
    *[_case({f"{s}.{m}.hidden": 0}, f"{s}.{m}.hidden", "(0, 4096]") for s, m in MODEL_BLOCKS],
    *[_case({f"{s}.{m}.layers": 0}, f"{s}.{m}.layers", "> 0") for s, m in MODEL_BLOCKS],
    # a key written twice: raw text, at every depth (YAML itself would keep the last)
    _dup_case("seed:", "seed: 1", "seed"),
    _dup_case("  steps: 300", "  steps: 301", "zoo.steps"),
    _dup_case("    mode: np", "    mode: hnp", "train.nfn.mode"),
    _dup_case("    digits_test: 500", "    digits_test: 400", "kan.classifier.digits_test"),
    _dup_case("      probe_features: 0", "      probe_features: 0", "kan.train.ng_gnn.probe_features"),
    pytest.param("zoo:\n  steps: 3\nseed: 0\nzoo:\n  steps: 4\n", "zoo", "lines 1 and 4", id="twice-section"),
]


def _write(tmp_path: Path, change: dict[str, Any] | str) -> Path:
    """``change`` applied to the real params.yaml (dotted keys), or raw text, as a file."""
    if isinstance(change, str):
        text = change
    else:
        raw = yaml.safe_load(PARAMS_TEXT)
        for dotted, value in change.items():
            *parents, last = dotted.split(".")
            node = raw
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        text = yaml.safe_dump(raw, sort_keys=False)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("change", "key", "allowed"), CASES)
def test_bad_value_is_refused_at_load_naming_key_and_allowed_values(tmp_path, change, key, allowed):
    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, change))
    msg = str(info.value)
    assert re.search(rf"(^|[\s/]){re.escape(key)}:", msg), msg  # the full dotted path, not a suffix
    assert allowed in msg, msg


@pytest.mark.parametrize("path", ["params.yaml", "profiles/paper.yaml"])
def test_shipped_profiles_load(path):
    p = load_params(REPO / path)
    assert p.profile in ("default", "paper")


def test_inf_only_where_a_field_allows_it(tmp_path):
    p = load_params(_write(tmp_path, {"train.grad_clip": INF}))  # no clipping
    assert p.train.grad_clip == INF


def test_every_model_settings_declares_its_ranges_and_its_defaults_pass():
    """A new model's numeric and string fields need a ``setting(...)`` rule; its defaults load."""
    for name in model_names():
        cls = settings_type(name)
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float", "str", int, float, str):
                assert "rule" in f.metadata, f"{name}.Settings.{f.name} declares no range (pipeline.config.setting)"
    sections = {m: dataclasses.asdict(settings_type(m)()) for m in model_names()}
    p = params_from_dict({"kan": {"train": sections}})
    assert set(p.kan.train.model_settings) == set(model_names())


def test_the_limits_copied_into_the_params_match_their_sources():
    """KAN orders the fused kernel accepts, and the digits the classifier zoo splits."""
    import re

    from sklearn.datasets import load_digits

    from pipeline.config import KAN_MAX_ORDER, N_DIGIT_CLASSES, N_DIGITS

    cpp = (Path(__file__).resolve().parents[1] / "pipeline" / "zoo" / "csrc" / "kan_spline.cpp").read_text()
    assert int(re.search(r"constexpr int kMaxOrder = (\d+);", cpp).group(1)) == KAN_MAX_ORDER
    digits = load_digits()
    assert (len(digits.target), len(set(digits.target.tolist()))) == (N_DIGITS, N_DIGIT_CLASSES)


def test_a_model_with_its_own_augmentation_trains_with_it(tmp_path):
    from pipeline.augment import model_augment

    p = load_params(_write(tmp_path, {"train.augment": "sign_flip", "train.mlp.augment": "none"}))
    assert model_augment(p.train.augment, p.train.settings("mlp")) == "none"
    assert model_augment(p.train.augment, p.train.settings("mlp_perm")) == "none"  # + permutations (the suffix)
    assert model_augment(p.train.augment, p.train.settings("dwsnet")) == "sign_flip"  # no such setting
    p = load_params(_write(tmp_path, {"train.augment": "sign_flip", "train.mlp.augment": ""}))
    assert model_augment(p.train.augment, p.train.settings("mlp")) == "sign_flip"  # unset: the stage's


def test_augmentations_combine_with_plus(tmp_path):
    p = load_params(_write(tmp_path, {"train.augment": "sign_flip+inr_affine", "edit.augment": "none"}))
    assert (p.train.augment, p.edit.augment) == ("sign_flip+inr_affine", "none")
