import json
from typing import Any

import pytest
import torch

from models.checkpoint import weights_of
from models.cnn import CNNConfig, DropoutCNN
from models.mlp import DropoutMLPScratch, MLPConfig, forward_layers
from models.networks import KINDS, build_model, config_from_dict
from tests.helpers import TINY_CNN, tiny_cnn

RGB = CNNConfig(
    in_channels=3,
    height=32,
    width=32,
    channels=(8, 16, 32),
    convs_per_block=2,
    hidden=(64, 32),
    dropout=(0.3, 0.5),
)


def make(config: CNNConfig = TINY_CNN, seed: int = 0) -> DropoutCNN:
    torch.manual_seed(seed)
    return build_model(config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": ()}, r"channels must be positive integers, one per block, got \(\)"),
        ({"channels": (8, 0)}, "channels must be positive integers"),
        ({"convs_per_block": 0}, "convs_per_block must be >= 1, got 0"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"height": 3}, "height and width must be at least 4, got 3x28"),
        ({"width": 15, "channels": (4, 8, 16, 32)}, "must be at least 16, got 28x15"),
        ({"hidden": (16, 16)}, "2 hidden layers but 1 probabilities"),
        ({"dropout": (1.0,)}, r"dropout probabilities must be in \[0, 1\)"),
        ({"hidden": (), "dropout": ()}, "hidden sizes must be positive integers"),
        ({"num_outputs": 1}, "num_outputs must be >= 2, got 1"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CNNConfig(**kwargs)


@pytest.mark.parametrize("config", [CNNConfig(), RGB])
def test_config_round_trips_through_json_with_its_kind(config: CNNConfig) -> None:
    d = json.loads(json.dumps(config.to_dict()))
    assert d["kind"] == "cnn"
    assert config_from_dict(d) == config


def test_kinds_dispatch_and_a_config_without_kind_is_an_mlp() -> None:
    assert KINDS == ("mlp", "cnn")
    mlp = MLPConfig(hidden=(8,), dropout=(0.5,))
    assert mlp.to_dict()["kind"] == "mlp"
    old = {k: v for k, v in mlp.to_dict().items() if k != "kind"}
    assert config_from_dict(old) == mlp
    assert isinstance(build_model(mlp), DropoutMLPScratch)
    assert isinstance(build_model(TINY_CNN), DropoutCNN)
    with pytest.raises(
        ValueError, match=r"unknown architecture kind 'rnn' \(this build knows mlp, cnn\)"
    ):
        config_from_dict({**TINY_CNN.to_dict(), "kind": "rnn"})
    with pytest.raises(ValueError, match="the config must be a JSON object, got list"):
        config_from_dict([1, 2])


def _conv_shapes(model: DropoutCNN) -> list[list[int]]:
    return [list(unit.conv.weight.shape) for block in model.units for unit in block]


def test_gray_28x28_shapes() -> None:
    config = CNNConfig()
    assert (config.num_inputs, config.features) == (784, 64 * 7 * 7)
    assert config.sizes == (3136, 256, 10)
    model = make(config)
    assert _conv_shapes(model) == [[32, 1, 3, 3], [64, 32, 3, 3]]
    assert [(m.in_features, m.out_features) for m in model.layers()] == [(3136, 256), (256, 10)]
    X = torch.rand(5, 784)
    assert model.eval().embed(X).shape == (5, 3136)
    assert model(X).shape == (5, 10)


def test_rgb_32x32_shapes_with_two_convs_per_block() -> None:
    assert (RGB.num_inputs, RGB.features, RGB.sizes) == (3072, 32 * 4 * 4, (512, 64, 32, 10))
    model = make(RGB)
    assert _conv_shapes(model) == [
        [8, 3, 3, 3],
        [8, 8, 3, 3],
        [16, 8, 3, 3],
        [16, 16, 3, 3],
        [32, 16, 3, 3],
        [32, 32, 3, 3],
    ]
    X = torch.rand(2, 3, 32, 32)
    assert model.eval().embed(X).shape == (2, 512)
    assert model(X).shape == (2, 10)


def test_features_follow_the_pools_flooring_odd_sides() -> None:
    config = CNNConfig(height=7, width=13, channels=(4, 8), hidden=(8,), dropout=(0.5,))
    assert config.features == 8 * 1 * 3
    assert make(config).eval().embed(torch.rand(2, 91)).shape == (2, 24)


def test_embed_accepts_flat_3d_and_4d_input_alike() -> None:
    model = tiny_cnn()
    images = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        four = model.embed(images)
        assert torch.equal(model.embed(images.reshape(6, 784)), four)
        assert torch.equal(model.embed(images.reshape(6, 28, 28)), four)
    rgb = make(RGB).eval()
    pictures = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rgb.embed(pictures.reshape(3, -1)), rgb.embed(pictures))


@pytest.mark.parametrize(
    ("config", "shape", "message"),
    [
        (
            TINY_CNN,
            (2, 783),
            r"expected inputs of shape \[batch, 784\] or \[batch, 1, 28, 28\] or ",
        ),
        (TINY_CNN, (2, 28, 28, 1), r"got \[2, 28, 28, 1\]"),
        (TINY_CNN, (784,), r"got \[784\]"),
        (RGB, (2, 32, 32), r"\[batch, 3072\] or \[batch, 3, 32, 32\], got \[2, 32, 32\]"),
    ],
)
def test_embed_refuses_other_shapes(
    config: CNNConfig, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(config).embed(torch.rand(shape))


def test_eval_mode_is_deterministic_and_uses_running_statistics() -> None:
    model = tiny_cnn()
    X = torch.rand(8, 784)
    with torch.no_grad():
        out = model(X)
        assert torch.equal(model(X), out)
        expected = forward_layers(model.layers(), TINY_CNN.dropout, model.embed(X), dropout=False)
        assert torch.equal(out, expected)
        # Running statistics, not the batch's: an instance's answer does not depend on the others.
        torch.testing.assert_close(model(X[:1]), out[:1])
        before = {k: v.clone() for k, v in weights_of(model).items()}
        model(torch.rand(8, 784) * 5)
    for k, v in weights_of(model).items():
        assert torch.equal(v, before[k]), k


def test_dropout_is_the_only_randomness_in_train_mode() -> None:
    model = make()
    model.train()
    X = torch.rand(8, 784)
    with torch.no_grad():
        embedded = model.embed(X)
        assert torch.equal(model.embed(X), embedded)  # BatchNorm on batch statistics: no noise

        def run(seed: int) -> torch.Tensor:
            torch.manual_seed(seed)
            out: torch.Tensor = model(X)
            return out

        assert torch.equal(run(1), run(1))
        assert (run(1) - run(2)).abs().max() > 1e-3
        no_dropout = forward_layers(model.layers(), TINY_CNN.dropout, embedded, dropout=False)
        assert (run(1) - no_dropout).abs().max() > 1e-3
    # Train mode moved the running statistics; eval mode differs from train mode without dropout.
    assert not torch.equal(weights_of(model)["features.0.0.bn.running_mean"], torch.zeros(4))
    with torch.no_grad():
        assert not torch.allclose(model.eval()(X), no_dropout)
