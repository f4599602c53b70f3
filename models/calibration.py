"""Calibration fitted on held-out data: temperature scaling, an abstention threshold, and the
Wilson interval that says how precisely N passes measure agreement."""

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of logits [n, C], or of the mean probabilities over the
    passes of logits [passes, n, C] (MC dropout), at the given temperature."""
    z = logits.double() / temperature
    if z.dim() == 2:
        return float(F.cross_entropy(z, labels))
    # log mean_t softmax(z_t) = logsumexp_t log_softmax(z_t) - log T, stable for confident passes.
    log_mean = torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - math.log(z.shape[0])
    return float(F.nll_loss(log_mean, labels))


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature that minimises nll() over `bounds`: golden-section search on log T.

    The NLL of temperature-scaled logits is unimodal in log T for one set of logits; for the
    mean of several passes it is in practice, and the search needs nothing but evaluations.
    """
    if labels.numel() == 0:
        raise ValueError("fitting a temperature needs at least one example")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(40):  # the bracket shrinks by 0.618 a step: 40 steps reach ~1e-8 in log T
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class Threshold:
    threshold: float  # abstain when the score is below it
    coverage: float  # share of examples answered (score >= threshold)
    selective_accuracy: float  # accuracy on the answered examples


def apply_threshold(scores: torch.Tensor, correct: torch.Tensor, threshold: float) -> Threshold:
    answered = scores >= threshold
    n = int(answered.sum())
    accuracy = float(correct[answered].double().mean()) if n else float("nan")
    return Threshold(threshold, n / len(scores), accuracy)


def select_threshold(scores: torch.Tensor, correct: torch.Tensor, target: float) -> Threshold:
    """The lowest threshold (so the largest coverage) whose selective accuracy reaches `target`.

    Candidates are the distinct scores; if none reaches the target, the highest score is
    returned (the model then answers only its most confident cases).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target selective accuracy must be in (0, 1], got {target}")
    if scores.shape != correct.shape or scores.numel() == 0:
        raise ValueError("scores and correct must be non-empty and of the same shape")
    order = torch.argsort(scores.double(), descending=True)
    s, c = scores.double()[order], correct[order].double()
    accuracy = c.cumsum(0) / torch.arange(1, len(c) + 1, dtype=torch.float64)
    # A threshold admits every example with the same score at once: look only at the last
    # position of each run of equal scores.
    last_of_run = torch.ones_like(s, dtype=torch.bool)
    last_of_run[:-1] = s[1:] != s[:-1]
    ok = (accuracy >= target) & last_of_run
    if not bool(ok.any()):
        return apply_threshold(scores, correct, float(s[0]))
    index = int(torch.nonzero(ok).max())
    return apply_threshold(scores, correct, float(s[index]))


def wilson_interval(
    successes: int, trials: int, z: float = 1.959963984540054
) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a binomial proportion successes / trials. In
    plain floats: an answer needs one per instance, where a dozen tensor operations cost tens of
    microseconds."""
    if trials < 1:
        raise ValueError("trials must be at least 1")
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    return max(centre - half, 0.0), min(centre + half, 1.0)
