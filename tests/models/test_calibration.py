import math

import pytest
import torch
from torch.nn import functional as F

from models.calibration import (
    apply_threshold,
    fit_temperature,
    nll,
    select_threshold,
    wilson_interval,
)


def test_nll_of_one_pass_is_cross_entropy_and_of_several_the_mean_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert nll(z[0], y, 2.0) == pytest.approx(float(F.cross_entropy(z[0] / 2.0, y)))
    mean = F.softmax(z.double() / 2.0, dim=-1).mean(0)
    assert nll(z, y, 2.0) == pytest.approx(float(-mean[torch.arange(6), y].log().mean()))


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    # Labels drawn from softmax(z / T): the NLL-minimising temperature converges to T; with
    # 50,000 examples its standard error is about 1% (checked by refitting on other seeds).
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(50_000, 10, generator=g)
    y = torch.multinomial(F.softmax(z / true_t, dim=-1), 1, generator=g).squeeze(1)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.05)


def test_fit_temperature_on_passes_beats_the_untempered_nll() -> None:
    g = torch.Generator().manual_seed(2)
    centre = 4 * torch.randn(2000, 10, generator=g)
    passes = centre + torch.randn(30, 2000, 10, generator=g)
    y = torch.multinomial(F.softmax(centre / 2, dim=-1), 1, generator=g).squeeze(1)
    t = fit_temperature(passes, y)
    assert t > 1.2  # the labels are noisier than the logits say
    assert nll(passes, y, t) < nll(passes, y) - 0.05
    assert nll(passes, y, t) <= min(nll(passes, y, t * 1.05), nll(passes, y, t / 1.05))


def test_select_threshold_takes_the_largest_coverage_that_meets_the_target() -> None:
    scores = torch.tensor([1.0, 1.0, 0.9, 0.9, 0.8, 0.7, 0.7], dtype=torch.float64)
    correct = torch.tensor([True, True, True, True, False, True, True])
    best = select_threshold(scores, correct, 1.0)
    assert (best.threshold, best.coverage, best.selective_accuracy) == (0.9, 4 / 7, 1.0)
    # 6 of 7 right at threshold 0.7: a tie at 0.7 admits both examples at once.
    relaxed = select_threshold(scores, correct, 0.85)
    assert (relaxed.threshold, relaxed.coverage) == (0.7, 1.0)
    assert relaxed.selective_accuracy == pytest.approx(6 / 7)


def test_select_threshold_when_the_target_cannot_be_met() -> None:
    scores = torch.tensor([1.0, 1.0, 0.5])
    correct = torch.tensor([True, False, True])
    t = select_threshold(scores, correct, 0.99)
    assert (t.threshold, t.coverage, t.selective_accuracy) == (1.0, 2 / 3, 0.5)
    with pytest.raises(ValueError, match="target"):
        select_threshold(scores, correct, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        select_threshold(scores, correct[:2], 0.9)


def test_apply_threshold() -> None:
    t = apply_threshold(torch.tensor([0.2, 0.6, 0.9]), torch.tensor([False, True, False]), 0.5)
    assert (t.coverage, t.selective_accuracy) == (2 / 3, 0.5)
    assert math.isnan(
        apply_threshold(torch.tensor([0.1]), torch.tensor([True]), 0.5).selective_accuracy
    )


def test_wilson_interval_known_values() -> None:
    # Hand-computed with z = 1.96: 5/10 -> [0.2366, 0.7634], 0/10 -> [0, 0.2775].
    intervals = [wilson_interval(k, 10) for k in (5, 0, 10)]
    assert [low for low, _ in intervals] == pytest.approx([0.2366, 0.0, 0.7225], abs=1e-4)
    assert [high for _, high in intervals] == pytest.approx([0.7634, 0.2775, 1.0], abs=1e-4)
    narrow_low, narrow_high = wilson_interval(950, 1000)
    wide_low, wide_high = wilson_interval(9, 10)
    assert narrow_high - narrow_low < (wide_high - wide_low) / 5
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)
