"""Other ways of injecting noise into the chapter's MLP, for the experiments (research code; the
service runs only models.mlp): dropout on the weights (DropConnect, Wan et al. 2013) and Gaussian
multiplicative noise (Srivastava et al. 2014, section 10), next to plain dropout.

Every kind is unbiased and, at the same p, has the same variance as inverted dropout's mask
(keep with 1-p, scale by 1/(1-p): mean 1, variance p/(1-p)), so a comparison at equal p compares
the shape of the noise, not its amount. The forward pass takes the mode as an argument, as the
served network does; MC passes draw from a generator.
"""

import itertools
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from models.stats import StatsAccumulator, UncertaintyStats, concat_stats

NoiseKind = Literal["none", "dropout", "dropconnect", "gaussian"]
NOISE_KINDS: tuple[str, ...] = get_args(NoiseKind)


def bernoulli_mask(shape: torch.Size, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Keep with probability 1-p, scaled by 1/(1-p): mean 1, variance p/(1-p)."""
    return torch.empty(shape).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)


def gaussian_multiplier(
    shape: torch.Size, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """1 + sqrt(p/(1-p)) * N(0, 1): the mean and variance of the dropout mask at the same p."""
    return torch.randn(shape, generator=generator).mul_((p / (1.0 - p)) ** 0.5).add_(1.0)


class NoisyMLP(nn.Module):
    """784-hidden-10 ReLU MLP with noise after each hidden layer (dropout, gaussian) or on the
    weights that read each hidden layer (dropconnect; one mask per forward call, so a minibatch
    in training and a whole pass over the inputs in MC mode share one sub-network)."""

    def __init__(
        self,
        kind: NoiseKind,
        ps: Sequence[float],
        hidden: Sequence[int] = (256, 256),
        num_inputs: int = 784,
        num_outputs: int = 10,
    ) -> None:
        super().__init__()
        if kind not in NOISE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
        if len(ps) != len(hidden) or any(not 0.0 <= p < 1.0 for p in ps):
            raise ValueError(f"give one p in [0, 1) per hidden layer, got {list(ps)}")
        self.kind, self.ps, self.num_outputs = kind, tuple(ps), num_outputs
        sizes = (num_inputs, *hidden, num_outputs)
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))

    def forward(
        self,
        X: torch.Tensor,
        stochastic: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        noisy = self.training if stochastic is None else stochastic
        return self.tail(self.head(X), noisy, generator)

    def head(self, X: torch.Tensor) -> torch.Tensor:
        """The first hidden layer: deterministic, so MC passes share it."""
        return F.relu(self.linears[0](X.reshape(X.shape[0], -1)))

    def tail(self, H: torch.Tensor, noisy: bool, generator: torch.Generator | None) -> torch.Tensor:
        linears: list[nn.Linear] = list(self.linears)  # type: ignore[arg-type]
        for linear, p in zip(linears[1:], self.ps, strict=True):
            weight = linear.weight
            if noisy and p > 0:
                if self.kind == "dropout":
                    H = H * bernoulli_mask(H.shape, p, generator)
                elif self.kind == "gaussian":
                    H = H * gaussian_multiplier(H.shape, p, generator)
                elif self.kind == "dropconnect":
                    weight = weight * bernoulli_mask(weight.shape, p, generator)
            H = F.linear(H, weight, linear.bias)
            if linear is not linears[-1]:
                H = F.relu(H)
        return H


def mc_stats(
    model: NoisyMLP, X: torch.Tensor, samples: int, seed: int, batch: int = 2000
) -> UncertaintyStats:
    """N noisy passes over X (in blocks of `batch` inputs, one seeded generator for the lot)."""
    if model.kind == "none":
        raise ValueError("a model without noise has no MC distribution")
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(X), batch):
            H = model.head(X[start : start + batch])
            acc = StatsAccumulator(len(H), model.num_outputs)
            for _ in range(samples):
                logits = model.tail(H, True, generator)
                acc.add(F.softmax(logits, -1)[None])  # [1, batch, classes]
            parts.append(acc.finish())
    return concat_stats(parts)
