"""Uncertainty statistics of N stochastic passes, accumulated chunk by chunk."""

from dataclasses import dataclass

import torch


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis; xlogy makes 0 log 0 = 0."""
    h: torch.Tensor = -torch.special.xlogy(p, p).sum(-1)
    return h


@dataclass(frozen=True)
class UncertaintyStats:
    class_index: torch.Tensor  # [batch] int64, argmax of mean_probabilities
    agreement: torch.Tensor  # [batch], share of passes whose argmax is class_index
    votes: torch.Tensor  # [batch, classes] int64, sums to samples
    mean_probabilities: torch.Tensor  # [batch, classes]
    std_probabilities: torch.Tensor  # [batch, classes], population std over the passes
    predictive_entropy: torch.Tensor  # [batch], H[mean p]
    expected_entropy: torch.Tensor  # [batch], mean over passes of H[p_t] (aleatoric)
    mutual_information: torch.Tensor  # [batch], predictive - expected (epistemic, BALD)
    samples: int


class StatsAccumulator:
    """Running sums in float64, so the passes never need to be held in memory together."""

    def __init__(self, batch: int, classes: int, device: torch.device | None = None) -> None:
        self.n = 0
        # [3, batch, classes]: sums over passes of p, p^2 and p log p, in one tensor so that each
        # chunk costs a handful of tensor operations (they dominate for small requests). The
        # first chunk's sums are taken as they are (0 + x is x), one request in one chunk being
        # the common case.
        self.sums: torch.Tensor | None = None
        self.votes = torch.zeros(batch, classes, dtype=torch.int64, device=device)

    def add(self, probs: torch.Tensor) -> None:
        """probs: [passes, batch, classes], each row a distribution."""
        self.n += probs.shape[0]
        terms = torch.stack((probs, probs * probs, torch.special.xlogy(probs, probs)))
        sums = terms.sum(1, dtype=torch.float64)
        if self.sums is None:
            self.sums = sums
        else:
            self.sums += sums
        winners = probs.argmax(-1).T  # [batch, passes]
        self.votes.scatter_add_(1, winners, torch.ones_like(winners))

    def finish(self) -> UncertaintyStats:
        if self.sums is None:
            raise ValueError("no passes were accumulated")
        mean, mean_sq, mean_plogp = self.sums / self.n
        # E[p^2] - E[p]^2 can come out a rounding error below zero.
        std = (mean_sq - mean * mean).clamp_min(0.0).sqrt()
        class_index = mean.argmax(-1)
        agreement = self.votes.gather(1, class_index[:, None]).squeeze(1).double() / self.n
        predictive = entropy(mean)
        expected = -mean_plogp.sum(-1)
        return UncertaintyStats(
            class_index=class_index,
            agreement=agreement,
            votes=self.votes,
            mean_probabilities=mean,
            std_probabilities=std,
            predictive_entropy=predictive,
            expected_entropy=expected,
            # Jensen makes this >= 0; clamp only rounding (~1e-16 in float64).
            mutual_information=(predictive - expected).clamp_min(0.0),
            samples=self.n,
        )


def summarize(probs: torch.Tensor) -> UncertaintyStats:
    """Statistics of probs [passes, batch, classes] held in memory at once."""
    acc = StatsAccumulator(probs.shape[1], probs.shape[2], probs.device)
    acc.add(probs)
    return acc.finish()
