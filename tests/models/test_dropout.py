import math

import pytest
import torch

from models.dropout import dropout_layer

N = 200_000


def _input(seed: int = 0) -> torch.Tensor:
    # Strictly positive, so an output zero can only come from the mask.
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, generator=g, dtype=torch.float64) + 0.5


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mean_is_preserved(p: float) -> None:
    X = _input()
    out = dropout_layer(X, p, torch.Generator().manual_seed(1))
    # out_i - X_i is X_i/(1-p) - X_i w.p. 1-p and -X_i w.p. p: mean 0, variance X_i^2 p/(1-p).
    # The mean of N such terms has standard error sqrt(sum X_i^2 p/(1-p)) / N; allow 5 of them.
    se = math.sqrt(float((X * X).sum()) * p / (1 - p)) / N
    assert abs(float((out - X).mean())) < 5 * se


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_zero_fraction_is_p_and_survivors_are_scaled_exactly(p: float) -> None:
    X = _input(2)
    out = dropout_layer(X, p, torch.Generator().manual_seed(3))
    kept = out != 0
    # The zero count is Binomial(N, p): the fraction has std sqrt(p (1-p) / N); allow 5 of them.
    assert abs(1 - float(kept.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / N)
    scale = torch.ones_like(X).div_(1 - p)  # 1/(1-p) computed the way nn.Dropout computes it
    assert torch.equal(out[kept], X[kept] * scale[kept])


def test_p_zero_returns_input_unchanged() -> None:
    X = _input()
    before = X.clone()
    assert torch.equal(dropout_layer(X, 0.0), before)
    assert torch.equal(X, before)


def test_p_one_gives_zeros_of_the_same_shape() -> None:
    X = torch.rand(3, 4, 5) + 0.5
    out = dropout_layer(X, 1.0)
    assert out.shape == X.shape
    assert out.dtype == X.dtype
    assert not out.any()


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_probability_outside_unit_interval_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout_layer(torch.ones(4), p)


def test_seeded_generator_reproduces_the_mask() -> None:
    X = torch.ones(10_000)
    a = dropout_layer(X, 0.5, torch.Generator().manual_seed(42))
    b = dropout_layer(X, 0.5, torch.Generator().manual_seed(42))
    c = dropout_layer(X, 0.5, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    dropout_layer(torch.ones(1000), 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
