"""Uncertainty statistics of N stochastic passes, accumulated chunk by chunk."""

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch


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

    def cpu(self) -> "UncertaintyStats":
        return replace(self, **{name: getattr(self, name).cpu() for name in STATISTICS})


STATISTICS = [f.name for f in fields(UncertaintyStats) if f.name != "samples"]


class StatsAccumulator:
    """Running sums in float64, so the passes never need to be held in memory together.

    Each chunk costs a handful of tensor operations whatever its size; they dominate for small
    requests, so the sums share one tensor, votes are one bincount, and the first chunk's
    results are kept as they are (0 + x is x), one request in one chunk being the common case.
    """

    def __init__(self, batch: int, classes: int, device: torch.device | None = None) -> None:
        self.n = 0
        self.batch, self.classes = batch, classes
        self.sums: torch.Tensor | None = None  # [3, batch, classes]: sums of p, p^2, p log p
        self.votes: torch.Tensor | None = None  # [batch * classes] int64
        # Instance i's votes for class c land in bin i * classes + c.
        self.offsets = (
            torch.arange(0, batch * classes, classes, device=device) if batch > 1 else None
        )

    def add(self, probs: torch.Tensor) -> None:
        """probs: [passes, batch, classes], each row a distribution."""
        self.n += probs.shape[0]
        terms = torch.stack((probs, probs * probs, torch.special.xlogy(probs, probs)))
        sums = terms.sum(1, dtype=torch.float64)
        winners = probs.argmax(-1)  # [passes, batch]
        if self.offsets is not None:
            winners = winners + self.offsets
        votes = torch.bincount(winners.view(-1), minlength=self.batch * self.classes)
        if self.sums is None or self.votes is None:
            self.sums, self.votes = sums, votes
        else:
            self.sums += sums
            self.votes += votes

    def finish(self) -> UncertaintyStats:
        if self.sums is None or self.votes is None:
            raise ValueError("no passes were accumulated")
        votes = self.votes.view(self.batch, self.classes)
        return _statistics(self.sums, votes, self.n, self.n)


def _statistics(
    sums: torch.Tensor, votes: torch.Tensor, n: int | torch.Tensor, samples: int
) -> UncertaintyStats:
    """From sums [3, batch, classes] of p, p^2 and p log p over n passes (n: [batch, 1] where
    instances differ)."""
    means = sums / n
    mean, mean_sq, _ = means
    # E[p^2] - E[p]^2 can come out a rounding error below zero.
    std = torch.addcmul(mean_sq, mean, mean, value=-1.0).clamp_min_(0.0).sqrt_()
    class_index = mean.argmax(-1)
    agreement = votes.gather(1, class_index[:, None]).double().div_(n).view(-1)
    # mean_sq is spent: its slot takes mean log mean, so that one sum gives both entropies (in
    # nats; xlogy makes 0 log 0 = 0).
    torch.special.xlogy(mean, mean, out=means[1])
    predictive, expected = means[1:].sum(-1).neg_()
    return UncertaintyStats(
        class_index=class_index,
        agreement=agreement,
        votes=votes,
        mean_probabilities=mean,
        std_probabilities=std,
        predictive_entropy=predictive,
        expected_entropy=expected,
        # Jensen makes this >= 0; clamp only rounding (~1e-16 in float64).
        mutual_information=(predictive - expected).clamp_min_(0.0),
        samples=samples,
    )


def grouped_stats(
    probs: torch.Tensor, instance: torch.Tensor, requests: Sequence[tuple[int, int]]
) -> list[UncertaintyStats]:
    """Each request's statistics, on the CPU, from the passes of several requests at once.

    probs [rows, classes]: every pass of every instance; instance [rows]: the row's instance,
    numbered across the requests in order; requests: each one's (instances, samples). A few
    tensor operations for all the requests together, and two copies to the CPU (one per dtype):
    on a GPU every copy waits for the device, and per-request statistics would cost a few dozen
    launches each.
    """
    batch, classes = sum(b for b, _ in requests), probs.shape[1]
    terms = torch.stack((probs, probs * probs, torch.special.xlogy(probs, probs)))
    sums = terms.new_zeros((3, batch, classes), dtype=torch.float64)
    sums.index_add_(1, instance, terms.double())
    winners = instance * classes + probs.argmax(-1)
    votes = torch.zeros(batch * classes, dtype=torch.int64, device=probs.device)
    votes = votes.index_add_(0, winners, torch.ones_like(winners)).view(batch, classes)
    # Every pass votes once: an instance's votes add up to its passes.
    every = _statistics(sums, votes, votes.sum(1, keepdim=True).double(), 0)
    on_cpu: dict[str, torch.Tensor] = {}
    for dtype in (torch.float64, torch.int64):
        names = [n for n in STATISTICS if getattr(every, n).dtype == dtype]
        columns = [getattr(every, n).view(batch, -1) for n in names]
        block = torch.cat(columns, 1).cpu()
        widths = [c.shape[1] for c in columns]
        for name, part in zip(names, torch.split(block, widths, 1), strict=True):
            on_cpu[name] = part if getattr(every, name).dim() == 2 else part.squeeze(1)
    sizes = [b for b, _ in requests]
    parts = {name: torch.split(value, sizes) for name, value in on_cpu.items()}
    return [
        UncertaintyStats(**{name: p[i] for name, p in parts.items()}, samples=s)
        for i, (_, s) in enumerate(requests)
    ]


def summarize(probs: torch.Tensor) -> UncertaintyStats:
    """Statistics of probs [passes, batch, classes] held in memory at once."""
    acc = StatsAccumulator(probs.shape[1], probs.shape[2], probs.device)
    acc.add(probs)
    return acc.finish()
