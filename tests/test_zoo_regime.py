"""The zoo-regime measurement: initial values drawn again exactly, movement per tensor."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.data import load_images
from pipeline.zoo.build import PlannedNet, fit_shard
from pipeline.zoo.regime import layer_names, tensor_movement, zoo_regime
from pipeline.zoo.siren import FitSettings, siren_spec
from pipeline.zoo.store import NetRecord, Zoo

SPEC = siren_spec([8, 8])


def tiny_zoo(variant: str, steps: int, n: int = 6) -> Zoo:
    """``n`` SIRENs of real digits fitted for ``steps`` Adam steps, as a loaded zoo."""
    images = load_images("mnist_offline")[0][:n]
    nets = [PlannedNet(i, i, 0, "train", 1000 + 7 * i) for i in range(n)]
    settings = FitSettings(steps, 1e-3, 30.0, variant, 60.0)
    params, extras = fit_shard(nets, images, SPEC, settings, chunk_size=4)
    records = [
        NetRecord(p.net_id, p.image_index, 0, "train", p.seed, 0.0, float(extras["psnr"][i]), steps, False, "s", "")
        for i, p in enumerate(nets)
    ]
    info = {"recipe": {"fit": dataclasses.asdict(settings)}}
    return Zoo(SPEC, params, records, info)


@pytest.mark.parametrize("variant", ["standard", "dwsnets"])
def test_an_unfitted_zoo_has_not_moved_and_a_fitted_one_has(variant: str):
    still = zoo_regime(tiny_zoo(variant, steps=0))
    # steps=0 keeps the per-seed draws, drawn again identically: every difference is exactly 0
    assert {k: v["moved"] for k, v in still["tensors"].items()} == dict.fromkeys(still["tensors"], 0.0)
    fitted = zoo_regime(tiny_zoo(variant, steps=30))
    assert all(v["moved"] > 0.01 for v in fitted["tensors"].values()), fitted["tensors"]
    if variant == "dwsnets":  # biases start at zero: everything they hold was written by fitting
        assert fitted["tensors"]["layers.0.bias"]["moved"] == pytest.approx(1.0)
        assert still["tensors"]["layers.0.bias"]["init_std"] == 0.0  # std of all-zero values


def test_the_initial_values_are_those_of_the_recorded_recipe_and_seeds():
    zoo = tiny_zoo("standard", steps=0)
    wrong_variant = dataclasses.replace(
        zoo, info={"recipe": {"fit": zoo.info["recipe"]["fit"] | {"variant": "dwsnets"}}}
    )
    assert zoo_regime(wrong_variant)["tensors"]["layers.0.weight"]["moved"] > 0.5  # its first layer differs
    shuffled = dataclasses.replace(zoo, records=[dataclasses.replace(r, seed=r.seed + 1) for r in zoo.records])
    assert zoo_regime(shuffled)["tensors"]["layers.0.weight"]["moved"] > 0.5


def test_diverged_nets_are_left_out_and_counted():
    zoo = tiny_zoo("standard", steps=5)
    zoo.records[1] = dataclasses.replace(zoo.records[1], diverged=True)
    regime = zoo_regime(zoo)
    assert (regime["n"], regime["diverged"]) == (5, 1)
    with pytest.raises(ValueError, match="no fitted net"):
        zoo_regime(zoo, split="test")


def test_movement_is_relative_to_the_fitted_values():
    theta0 = {"w": torch.ones(3, 4)}
    moved = tensor_movement({"w": 2 * torch.ones(3, 4)}, theta0)["w"]
    assert moved == {"moved": pytest.approx(0.5), "std": 0.0, "init_std": 0.0}
    with pytest.raises(ValueError, match="w: fitted"):
        tensor_movement({"w": torch.ones(3, 5)}, theta0)


def test_layer_names():
    assert list(layer_names(SPEC).values()) == ["W0", "b0", "W1", "b1", "W2", "b2"]
