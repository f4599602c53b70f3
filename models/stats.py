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
    """Running statistics in float64, so the passes never need to be held in memory together: per
    instance and class the mean and the variance of p, merged chunk by chunk (Chan, Golub and
    LeVeque's pairwise update), per instance the sum of the passes' entropies, and the votes.

    Each chunk costs a handful of tensor operations whatever its size; they dominate for small
    requests, so a chunk's mean and variance come from one var_mean, its votes from one bincount,
    and the first chunk's results are kept as they are, one request in one chunk being the common
    case.
    """

    def __init__(self, batch: int, classes: int, device: torch.device | None = None) -> None:
        self.n = 0
        self.batch, self.classes = batch, classes
        # mean and population variance [batch, classes], the sum over passes of H[p_t] [batch],
        # votes [batch * classes] int64; None before the first chunk.
        self.running: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # Instance i's votes for class c land in bin i * classes + c.
        self.offsets = (
            torch.arange(0, batch * classes, classes, device=device) if batch > 1 else None
        )

    def add(self, probs: torch.Tensor) -> None:
        """probs: [passes, batch, classes], each row a distribution."""
        k = probs.shape[0]
        p = probs.double()
        var, mean = torch.var_mean(p, 0, correction=0)
        entropy = torch.special.entr(p).sum((0, 2))  # entr: -p ln p, and 0 at 0
        winners = probs.argmax(-1)  # [passes, batch]
        if self.offsets is not None:
            winners = winners + self.offsets
        votes = torch.bincount(winners.view(-1), minlength=self.batch * self.classes)
        if self.running is None:
            self.running = mean, var, entropy, votes
        else:
            running_mean, running_var, running_entropy, running_votes = self.running
            n = self.n + k
            delta = mean - running_mean
            running_var.mul_(self.n / n).add_(var, alpha=k / n)
            running_var.addcmul_(delta, delta, value=self.n * k / n**2)
            running_mean.add_(delta, alpha=k / n)
            running_entropy += entropy
            running_votes += votes
        self.n += k

    def finish(self) -> UncertaintyStats:
        if self.running is None:
            raise ValueError("no passes were accumulated")
        mean, var, entropy, votes = self.running
        votes = votes.view(self.batch, self.classes)
        return _statistics(mean, var, entropy / self.n, votes, self.n, self.n)


def _statistics(
    mean: torch.Tensor,
    var: torch.Tensor,
    expected: torch.Tensor,
    votes: torch.Tensor,
    n: int | torch.Tensor,
    samples: int,
) -> UncertaintyStats:
    """From the mean and variance [batch, classes] of p over n passes (n: [batch, 1] where
    instances differ), and the mean of their entropies [batch]."""
    class_index = mean.argmax(-1)
    agreement = votes.gather(1, class_index[:, None]).double().div_(n).view(-1)
    predictive = torch.special.entr(mean).sum(-1)  # in nats
    return UncertaintyStats(
        class_index=class_index,
        agreement=agreement,
        votes=votes,
        mean_probabilities=mean,
        std_probabilities=var.sqrt(),
        predictive_entropy=predictive,
        expected_entropy=expected,
        # Jensen makes this >= 0; clamp only rounding (~1e-16 in float64).
        mutual_information=(predictive - expected).clamp_min_(0.0),
        samples=samples,
    )


def grouped_on_device(
    probs: torch.Tensor, instance: torch.Tensor, requests: Sequence[tuple[int, int]]
) -> UncertaintyStats:
    """Every instance's statistics, on probs' device, from the passes of several requests at once.

    probs [rows, classes]: every pass of every instance; instance [rows]: the row's instance,
    numbered across the requests in order; requests: each one's (instances, samples). A few
    tensor operations for all the requests together, where per-request statistics would cost a
    few dozen launches each on a GPU. Nothing is copied to the host or read there, so a CUDA
    graph can capture it (bench/engine.py); split_requests then copies the statistics to the CPU
    and cuts them into each request's. `samples` is 0 here: the instances' counts of passes are
    their votes' sums.
    """
    batch, classes = sum(b for b, _ in requests), probs.shape[1]
    winners = instance * classes + probs.argmax(-1)
    votes = torch.zeros(batch * classes, dtype=torch.int64, device=probs.device)
    votes = votes.index_add_(0, winners, torch.ones_like(winners)).view(batch, classes)
    # Every pass votes once: an instance's votes add up to its passes.
    n = votes.sum(1, keepdim=True).double()
    p = probs.double()
    terms = torch.stack((p, torch.special.entr(p)))
    mean, entropy = p.new_zeros((2, batch, classes)).index_add_(1, instance, terms) / n
    # The variance in a second pass over the deviations, as exact as the accumulator's (the
    # shortcut E[p^2] - E[p]^2 loses a small variance to cancellation).
    deviations = (p - mean.index_select(0, instance)).square_()
    var = p.new_zeros((batch, classes)).index_add_(0, instance, deviations).div_(n)
    return _statistics(mean, var, entropy.sum(-1), votes, n, 0)


def split_requests(
    every: UncertaintyStats, requests: Sequence[tuple[int, int]]
) -> list[UncertaintyStats]:
    """The statistics of every instance (grouped_on_device) copied to the CPU, and cut into each
    request's, with its samples. Two copies, one per dtype: on a GPU every copy waits for the
    device."""
    batch = sum(b for b, _ in requests)
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


def concat_stats(parts: Sequence[UncertaintyStats]) -> UncertaintyStats:
    """The statistics of consecutive blocks of instances as those of one batch; the one part
    itself where there is one."""
    if len(parts) == 1:
        return parts[0]
    columns = {name: torch.cat([getattr(s, name) for s in parts]) for name in STATISTICS}
    return UncertaintyStats(**columns, samples=parts[0].samples)


def summarize(probs: torch.Tensor) -> UncertaintyStats:
    """Statistics of probs [passes, batch, classes] held in memory at once."""
    acc = StatsAccumulator(probs.shape[1], probs.shape[2], probs.device)
    acc.add(probs)
    return acc.finish()
