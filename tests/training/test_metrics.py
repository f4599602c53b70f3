import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from training import metrics


def random_probs(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, classes, generator=g, dtype=torch.float64), -1)
    labels = torch.randint(0, classes, (n,), generator=g)
    return probs, labels


PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.62, 0.28], [0.5, 0.25, 0.25], [0.18, 0.2, 0.62]])
LABELS = torch.tensor([0, 2, 0, 1])  # right, wrong, right, wrong


def test_accuracy_nll_brier_by_hand() -> None:
    assert metrics.accuracy(PROBS, LABELS) == 0.5
    expected_nll = -(math.log(0.7) + math.log(0.28) + math.log(0.5) + math.log(0.2)) / 4
    assert metrics.negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected_nll)
    # 0.3^2 + 0.2^2 + 0.1^2, 0.1^2 + 0.62^2 + 0.72^2, 0.5^2 + 2 * 0.25^2, 0.18^2 + 0.8^2 + 0.62^2
    expected_brier = (0.14 + 0.9128 + 0.375 + 1.0568) / 4
    assert metrics.brier(PROBS, LABELS) == pytest.approx(expected_brier)


def test_nll_of_a_zero_probability_is_finite() -> None:
    probs = torch.tensor([[1.0, 0.0]])
    assert metrics.negative_log_likelihood(probs, torch.tensor([1])) == pytest.approx(
        -math.log(1e-12)
    )


def test_nll_and_brier_match_scikit_learn() -> None:
    probs, labels = random_probs(500, 10, seed=1)
    y, p = labels.numpy(), probs.numpy()
    assert metrics.negative_log_likelihood(probs, labels) == pytest.approx(
        log_loss(y, p, labels=list(range(10)))
    )
    assert metrics.brier(probs, labels) == pytest.approx(
        brier_score_loss(y, p, labels=list(range(10)), scale_by_half=False)
    )


def test_ece_by_hand() -> None:
    # Confidences 0.7, 0.62, 0.5, 0.62 fall in the bins (10/15, 11/15], (9/15, 10/15] twice and
    # (7/15, 8/15]: |1 - 0.7| * 1/4 + |0 - 0.62| * 2/4 + |1 - 0.5| * 1/4.
    r = metrics.reliability(PROBS, LABELS)
    assert r.ece == pytest.approx(0.3 / 4 + 0.62 * 2 / 4 + 0.5 / 4)
    assert sum(r.counts) == 4
    assert r.counts[9] == 2
    assert r.accuracy[9] == 0.0
    assert r.confidence[9] == pytest.approx(0.62)
    assert r.counts[10] == 1
    assert r.accuracy[10] == 1.0
    assert r.counts[7] == 1
    assert math.isnan(r.accuracy[0])
    assert len(r.edges) == 16
    # Two bins: (0, 0.5] holds the 0.5, (0.5, 1] the others.
    two = metrics.reliability(PROBS, LABELS, bins=2)
    assert two.counts == [1, 3]
    assert two.ece == pytest.approx(0.25 * 0.5 + 0.75 * abs(1 / 3 - (0.7 + 0.62 + 0.62) / 3))


def test_ece_is_zero_when_calibrated_and_bins_match_scikit_learn() -> None:
    probs, labels = random_probs(4000, 10, seed=2)
    r = metrics.reliability(probs, labels)
    conf = probs.max(-1).values.numpy()
    correct = (probs.argmax(-1) == labels).numpy()
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=15, strategy="uniform")
    filled = [i for i, c in enumerate(r.counts) if c > 0]
    np.testing.assert_allclose([r.accuracy[i] for i in filled], prob_true)
    np.testing.assert_allclose([r.confidence[i] for i in filled], prob_pred)
    # Labels drawn from the probabilities themselves: calibrated up to sampling noise.
    g = torch.Generator().manual_seed(3)
    drawn = torch.multinomial(probs, 1, generator=g).squeeze(1)
    assert metrics.ece(probs, drawn) < 0.03
    assert metrics.ece(probs, labels) > 0.3  # random labels: badly overconfident


def test_error_auroc_and_ood_auroc_match_scikit_learn() -> None:
    probs, labels = random_probs(300, 10, seed=4)
    correct = probs.argmax(-1) == labels
    score = -probs.max(-1).values
    assert metrics.error_auroc(score, correct) == pytest.approx(
        roc_auc_score((~correct).numpy(), score.numpy())
    )
    # By hand: errors scored 0.9 and 0.4, right ones 0.5 and 0.1: 3 of 4 pairs ordered right.
    assert metrics.error_auroc(
        torch.tensor([0.9, 0.5, 0.4, 0.1]), torch.tensor([False, True, False, True])
    ) == pytest.approx(0.75)
    assert math.isnan(metrics.error_auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))
    assert metrics.ood_auroc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.9])) == (
        pytest.approx(5 / 6)
    )


def test_risk_coverage_by_hand() -> None:
    # Most confident first: right, wrong, right, wrong.
    uncertainty = torch.tensor([0.4, 0.1, 0.9, 0.3])
    correct = torch.tensor([True, True, False, False])
    rc = metrics.risk_coverage(uncertainty, correct)
    torch.testing.assert_close(rc.coverage, torch.tensor([0.25, 0.5, 0.75, 1.0]).double())
    torch.testing.assert_close(rc.risk, torch.tensor([0.0, 0.5, 1 / 3, 0.5]).double())
    assert rc.aurc == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # A perfect ranking: all right ones first.
    assert metrics.aurc(torch.tensor([0.0, 0.1, 0.8, 0.9]), correct) == pytest.approx(
        (0 + 0 + 1 / 3 + 2 / 4) / 4
    )


def test_risk_coverage_breaks_ties_in_expectation() -> None:
    uncertainty = torch.tensor([0.5, 0.5, 0.5, 0.1, 0.9, 0.1])
    correct = torch.tensor([True, False, True, False, True, True])
    # Brute force: average the curve over every order of the tied examples.
    curves = []
    for perm in itertools.permutations(range(6)):
        keys = {i: (float(uncertainty[i]), rank) for rank, i in enumerate(perm)}
        order = sorted(range(6), key=lambda i: keys[i])
        wrong = (~correct[order]).double()
        curves.append(torch.cumsum(wrong, 0) / torch.arange(1, 7))
    expected = torch.stack(curves).mean(0)
    torch.testing.assert_close(metrics.risk_coverage(uncertainty, correct).risk, expected)
    with pytest.raises(ValueError, match="at least one"):
        metrics.risk_coverage(torch.tensor([]), torch.tensor([], dtype=torch.bool))


def test_fpr_at_95_tpr() -> None:
    out_scores = torch.arange(1, 21).double()  # 20 OOD inputs: 95% of them score >= 2
    in_scores = torch.tensor([0.5, 1.5, 2.5, 3.0, 30.0]).double()
    assert metrics.fpr_at_tpr(in_scores, out_scores) == pytest.approx(3 / 5)
    # Separable: no in-distribution input is flagged.
    assert metrics.fpr_at_tpr(torch.zeros(10), torch.ones(10)) == 0.0
    # Reversed: every in-distribution input is flagged before 95% of the OOD ones are.
    assert metrics.fpr_at_tpr(torch.ones(10), torch.zeros(10)) == 1.0
