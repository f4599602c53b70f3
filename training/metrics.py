"""Metrics of predictive quality: accuracy, NLL, Brier, ECE (with the reliability bins), error
detection (AUROC, AURC, risk-coverage) and out-of-distribution detection (AUROC, FPR at 95% TPR).

Probabilities are [n, classes] tensors; scores are [n] tensors where HIGHER means MORE UNCERTAIN
(negate a confidence such as the max probability or the agreement before passing it).
"""

from dataclasses import dataclass

import numpy as np
import torch

ECE_BINS = 15
_EPS = 1e-12  # log(0) guard: a probability of exactly 0 for the true class scores -log(1e-12)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).double().mean())


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    p = probs.double().gather(1, labels[:, None]).squeeze(1)
    return float(-p.clamp_min(_EPS).log().mean())


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of the squared distance to the one-hot label, summed over classes
    (in [0, 2]; the multi-class form of Brier 1950 used by Ovadia et al. 2019)."""
    onehot = torch.nn.functional.one_hot(labels, probs.shape[-1]).double()
    return float(((probs.double() - onehot) ** 2).sum(-1).mean())


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins (lo, hi]; the first bin also holds a confidence of 0."""

    edges: list[float]  # bins + 1 values from 0 to 1
    counts: list[int]
    confidence: list[float]  # mean confidence per bin (nan when empty)
    accuracy: list[float]  # accuracy per bin (nan when empty)
    ece: float  # sum over bins of count / n * |accuracy - confidence|


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> Reliability:
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # right=False: index i such that edges[i-1] < conf <= edges[i]; bin i-1 in 0..bins-1.
    index = (torch.bucketize(conf, edges) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    n = counts.clamp_min(1).double()
    mean_conf, mean_acc = conf_sum / n, correct_sum / n
    ece = float((counts.double() / len(labels) * (mean_acc - mean_conf).abs()).sum())
    empty = counts == 0
    return Reliability(
        edges=edges.tolist(),
        counts=counts.tolist(),
        confidence=mean_conf.masked_fill(empty, float("nan")).tolist(),
        accuracy=mean_acc.masked_fill(empty, float("nan")).tolist(),
        ece=ece,
    )


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    return reliability(probs, labels, bins).ece


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for detecting `positive` (nan if one class only)."""
    from sklearn.metrics import roc_auc_score  # optional dependency (the "report" extra)

    y = positive.bool().numpy()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, scores.double().numpy()))


def error_auroc(uncertainty: torch.Tensor, correct: torch.Tensor) -> float:
    """AUROC of the uncertainty score for "this prediction is wrong"."""
    return auroc(uncertainty, ~correct.bool())


@dataclass(frozen=True)
class RiskCoverage:
    coverage: torch.Tensor  # [n], k / n for k = 1..n
    risk: torch.Tensor  # [n], error rate among the k most confident (ties in expectation)

    @property
    def aurc(self) -> float:
        """Area under the risk-coverage curve: the mean risk over the n coverages."""
        return float(self.risk.mean())


def risk_coverage(uncertainty: torch.Tensor, correct: torch.Tensor) -> RiskCoverage:
    """Answer the k least uncertain examples, k = 1..n. Equal scores are admitted in a random
    order; the risk is its expectation (the errors of a tied group spread evenly over it), so
    coarse scores such as agreement (multiples of 1/N) are not favoured by an arbitrary order."""
    n = len(correct)
    if n == 0:
        raise ValueError("risk-coverage needs at least one example")
    s, order = torch.sort(uncertainty.double(), stable=True)
    wrong = (~correct.bool()[order]).double()
    _, inverse, group_size = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    group_errors = torch.zeros(len(group_size), dtype=torch.float64).index_add_(0, inverse, wrong)
    errors_before = torch.cumsum(group_errors, 0) - group_errors  # [groups]
    starts = torch.cumsum(group_size, 0) - group_size
    k = torch.arange(1, n + 1, dtype=torch.float64)
    within = k - starts[inverse].double()  # 1..size inside each group
    expected_errors = (
        errors_before[inverse] + within * group_errors[inverse] / group_size[inverse].double()
    )
    return RiskCoverage(coverage=k / n, risk=expected_errors / k)


def aurc(uncertainty: torch.Tensor, correct: torch.Tensor) -> float:
    return risk_coverage(uncertainty, correct).aurc


def ood_auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """AUROC of the score for "this input is out of distribution" (out = positive)."""
    scores = torch.cat([in_scores.double(), out_scores.double()])
    positive = torch.cat([torch.zeros(len(in_scores)), torch.ones(len(out_scores))])
    return auroc(scores, positive)


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """Share of in-distribution inputs flagged at the lowest threshold that flags at least
    `tpr` of the out-of-distribution ones (flagged: score >= threshold)."""
    from sklearn.metrics import roc_curve

    scores = np.concatenate([in_scores.double().numpy(), out_scores.double().numpy()])
    positive = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    fprs, tprs, _ = roc_curve(positive, scores, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr - 1e-12, side="left")])
