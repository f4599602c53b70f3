import math
from dataclasses import fields

import pytest
import torch

from models.engine import row_indices
from models.stats import (
    StatsAccumulator,
    UncertaintyStats,
    grouped_on_device,
    split_requests,
    summarize,
)

LN2 = math.log(2)


def _hand_entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p ln p in float64, with 0 ln 0 taken as 0 by masking."""
    p = p.double()
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0).sum(-1)


def _random_probs(passes: int, batch: int, classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(passes, batch, classes, generator=g), dim=-1)


def test_identical_passes() -> None:
    q = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    s = summarize(q.expand(5, 1, 4).clone())  # [passes, batch, classes]
    h = 0.5 * LN2 + 0.25 * 2 * LN2 + 2 * 0.125 * 3 * LN2  # = 1.75 ln 2
    assert s.samples == 5
    assert s.class_index.tolist() == [0]
    assert s.votes.tolist() == [[5, 0, 0, 0]]
    assert s.agreement.tolist() == [1.0]
    assert torch.equal(s.mean_probabilities, q[None])
    assert s.std_probabilities.abs().max() < 1e-12
    assert s.predictive_entropy.item() == pytest.approx(h, abs=1e-12)
    assert s.expected_entropy.item() == pytest.approx(h, abs=1e-12)
    assert s.mutual_information.item() == pytest.approx(0.0, abs=1e-12)


def test_two_disagreeing_one_hot_passes() -> None:
    probs = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    s = summarize(probs)
    assert s.mean_probabilities.tolist() == [[0.5, 0.5, 0.0]]
    assert s.std_probabilities.tolist() == [[0.5, 0.5, 0.0]]
    assert s.votes.tolist() == [[1, 1, 0]]
    assert s.class_index.tolist() == [0]  # a tie goes to the first class
    assert s.agreement.tolist() == [0.5]
    assert s.expected_entropy.tolist() == [0.0]  # 0 ln 0 = 0, no NaN
    assert s.predictive_entropy.item() == pytest.approx(LN2, abs=1e-12)
    assert s.mutual_information.item() == pytest.approx(LN2, abs=1e-12)


def test_class_index_is_argmax_of_mean_not_majority_vote() -> None:
    probs = torch.tensor([[[0.40, 0.35, 0.25]], [[0.40, 0.35, 0.25]], [[0.0, 0.9, 0.1]]])
    s = summarize(probs)
    assert s.votes.tolist() == [[2, 1, 0]]  # the majority votes for class 0 ...
    assert s.class_index.tolist() == [1]  # ... but the mean [.27, .53, .13] peaks at class 1
    assert s.agreement.item() == pytest.approx(1 / 3)


def test_random_passes_match_float64_formulas() -> None:
    probs = _random_probs(50, 4, 10)
    s = summarize(probs)
    p = probs.double()
    mean = p.mean(0)
    predictive = _hand_entropy(mean)
    expected = _hand_entropy(p).mean(0)
    votes = torch.stack([torch.bincount(p[:, b].argmax(-1), minlength=10) for b in range(4)])
    assert s.samples == 50
    assert torch.equal(s.votes, votes)
    assert torch.equal(s.votes.sum(-1), torch.full((4,), 50))
    assert torch.equal(s.class_index, mean.argmax(-1))
    torch.testing.assert_close(
        s.agreement, votes.gather(1, s.class_index[:, None])[:, 0].double() / 50
    )
    torch.testing.assert_close(s.mean_probabilities, mean)
    torch.testing.assert_close(s.std_probabilities, torch.std(p, dim=0, unbiased=False))
    torch.testing.assert_close(s.predictive_entropy, predictive)
    torch.testing.assert_close(s.expected_entropy, expected)
    torch.testing.assert_close(s.mutual_information, predictive - expected)
    assert (s.mutual_information > 0).all()


def _assert_stats_close(a: UncertaintyStats, b: UncertaintyStats) -> None:
    assert a.samples == b.samples
    for f in fields(UncertaintyStats):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype, f.name
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12, msg=f.name)


@pytest.mark.parametrize("chunks", [[1] * 10 + [40], [7, 20, 23], [50]])
def test_chunked_accumulation_equals_summarize(chunks: list[int]) -> None:
    probs = _random_probs(50, 3, 10, seed=1)
    acc = StatsAccumulator(3, 10)
    for part in torch.split(probs, chunks):
        acc.add(part)
    _assert_stats_close(acc.finish(), summarize(probs))


def test_finish_without_passes_raises() -> None:
    with pytest.raises(ValueError, match="no passes"):
        StatsAccumulator(2, 10).finish()


def test_grouped_statistics_equal_each_requests_own() -> None:
    # Three requests of (instances, samples), their passes laid out as the fused engine lays
    # them: request after request, each pass after pass, [rows, classes].
    requests = [(2, 5), (1, 7), (3, 4)]
    probs = [_random_probs(n, b, 6, seed) for seed, (b, n) in enumerate(requests)]
    rows = torch.cat([p.reshape(-1, 6) for p in probs])
    instance, _ = row_indices(requests, torch.device("cpu"))
    grouped = split_requests(grouped_on_device(rows, instance, requests), requests)
    assert len(grouped) == 3
    for got, p in zip(grouped, probs, strict=True):
        want = summarize(p)
        assert got.samples == want.samples
        for f in fields(UncertaintyStats):
            a, b = getattr(got, f.name), getattr(want, f.name)
            if isinstance(a, torch.Tensor):
                assert a.device.type == "cpu"
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f.name)


@pytest.mark.parametrize("chunks", [[8], [3, 5], [1] * 8])
def test_std_is_exact_when_passes_barely_differ(chunks: list[int]) -> None:
    # Passes alternating 0.5 +- d: the std over them is d. E[p^2] - E[p]^2 would lose it (0.25 + d^2
    # rounds to 0.25 in float64, so it gave 0); the mean and variance merged chunk by chunk, or
    # the deviations from the mean summed, keep it.
    d = 1e-9
    probs = torch.tensor([[[0.5 + d, 0.5 - d]], [[0.5 - d, 0.5 + d]]], dtype=torch.float64)
    probs = probs.repeat(4, 1, 1)  # 8 passes
    acc = StatsAccumulator(1, 2)
    for part in torch.split(probs, chunks):
        acc.add(part)
    # The fused engine's statistics, from all the rows at once, as exact.
    instance = torch.zeros(8, dtype=torch.int64)
    (grouped,) = split_requests(grouped_on_device(probs.view(8, 2), instance, [(1, 8)]), [(1, 8)])
    for s in (acc.finish(), grouped):
        std, mean = s.std_probabilities, s.mean_probabilities
        torch.testing.assert_close(std, torch.full((1, 2), d, dtype=torch.float64))
        torch.testing.assert_close(mean, torch.full((1, 2), 0.5, dtype=torch.float64))
