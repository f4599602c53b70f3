"""MC dropout over many inputs through the engine, reproducibly: one seeded request per block of
inputs, seeded with the seed plus the block's first index. A number is then a function of the
checkpoint, the inputs, N, the seed and the block size alone, as the engine guarantees for a
request."""

import torch

from models.engine import Engine, MCRequest
from models.stats import UncertaintyStats, concat_stats

BLOCK = 500  # inputs per seeded request; changing it changes the passes drawn


def block_requests(X: torch.Tensor, samples: int, seed: int, block: int = BLOCK) -> list[MCRequest]:
    """One request per block of `block` inputs of X [n, 784], in order, seeded seed + start."""
    return [MCRequest(X[i : i + block], samples, seed + i) for i in range(0, len(X), block)]


def engine_stats(
    engine: Engine, X: torch.Tensor, samples: int, seed: int, block: int = BLOCK
) -> UncertaintyStats:
    return concat_stats(engine.uncertainty(block_requests(X, samples, seed, block)))


def engine_logits(
    engine: Engine, X: torch.Tensor, samples: int, seed: int, block: int = BLOCK
) -> torch.Tensor:
    """[samples, n, classes]: the very passes engine_stats() draws, as logits."""
    requests = block_requests(X, samples, seed, block)
    return torch.cat([engine.sample_logits(r) for r in requests], dim=1)
