import json
from dataclasses import replace
from typing import Any

import pytest
import torch

from models.mlp import (
    DropoutMLP,
    DropoutMLPConcise,
    DropoutMLPScratch,
    MLPConfig,
    Variant,
    build_model,
    forward_layers,
)

DEEP = MLPConfig(hidden=(64, 48, 32), dropout=(0.2, 0.5, 0.7))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden": (256,)}, "1 hidden layers but 2 probabilities"),
        ({"dropout": (0.5,)}, "2 hidden layers but 1 probabilities"),
        ({"dropout": (0.5, 1.0)}, r"dropout probabilities must be in \[0, 1\)"),
        ({"dropout": (-0.1, 0.5)}, r"dropout probabilities must be in \[0, 1\)"),
        ({"variant": "big"}, "variant must be 'scratch' or 'concise', got 'big'"),
        ({"hidden": (), "dropout": ()}, "hidden sizes must be positive integers"),
        ({"hidden": (256, 0)}, "hidden sizes must be positive integers"),
        ({"num_outputs": 1}, "num_outputs must be >= 2, got 1"),
        ({"num_inputs": 0}, "num_inputs must be >= 1"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MLPConfig(**kwargs)


@pytest.mark.parametrize("config", [MLPConfig(), replace(DEEP, variant="concise")])
def test_config_round_trips_through_json(config: MLPConfig) -> None:
    d = json.loads(json.dumps(config.to_dict()))
    assert MLPConfig.from_dict(d) == config


def test_default_config_is_the_chapter_network() -> None:
    config = MLPConfig()
    assert config.sizes == (784, 256, 256, 10)
    assert isinstance(build_model(config), DropoutMLPScratch)
    assert isinstance(build_model(MLPConfig(variant="concise")), DropoutMLPConcise)
    sizes = [(m.in_features, m.out_features) for m in build_model(config).layers()]
    assert sizes == [(784, 256), (256, 256), (256, 10)]


def _twins(config: MLPConfig) -> tuple[DropoutMLPScratch, DropoutMLPConcise]:
    torch.manual_seed(0)
    scratch, concise = DropoutMLPScratch(config), DropoutMLPConcise(config)
    with torch.no_grad():
        for a, b in zip(scratch.layers(), concise.layers(), strict=True):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    return scratch, concise


@pytest.mark.parametrize("config", [MLPConfig(), DEEP])
@pytest.mark.parametrize("shape", [(8, 784), (8, 1, 28, 28)])
def test_forms_agree_in_eval_mode(config: MLPConfig, shape: tuple[int, ...]) -> None:
    scratch, concise = _twins(config)
    X = torch.rand(shape)
    with torch.no_grad():
        assert torch.equal(scratch.eval()(X), concise.eval()(X))


@pytest.mark.parametrize("config", [MLPConfig(), DEEP])
def test_forms_draw_the_same_masks_in_train_mode(config: MLPConfig) -> None:
    scratch, concise = _twins(config)
    X = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        eval_out = scratch.eval()(X)
        scratch.train()
        concise.train()
        outs = []
        for model in (scratch, concise, scratch):
            torch.manual_seed(7)
            outs.append(model(X))
        torch.manual_seed(8)
        other_seed = scratch(X)
    assert torch.equal(outs[0], outs[2])
    assert torch.equal(outs[0], outs[1])  # same masks, same arithmetic: bitwise equal
    assert (outs[0] - eval_out).abs().max() > 1e-2
    assert (outs[0] - other_seed).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["scratch", "concise"])
@pytest.mark.parametrize("training", [True, False])
def test_forward_layers_without_dropout_is_eval_mode(variant: Variant, training: bool) -> None:
    torch.manual_seed(0)
    model: DropoutMLP = build_model(replace(DEEP, variant=variant))
    X = torch.rand(5, 784)
    model.train(training)
    with torch.no_grad():
        out = forward_layers(model.layers(), model.config.dropout, X, dropout=False)
        assert model.training is training
        assert torch.equal(out, model.eval()(X))


def test_forward_layers_with_generator_is_reproducible() -> None:
    torch.manual_seed(0)
    model = build_model(DEEP)
    X = torch.rand(5, 784)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return forward_layers(model.layers(), DEEP.dropout, X, dropout=True, generator=g)

    with torch.no_grad():
        assert torch.equal(run(1), run(1))
        assert not torch.equal(run(1), run(2))
