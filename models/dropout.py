import torch


def dropout_layer(
    X: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Inverted dropout (d2l.ai): keep each element with probability 1-p, scaled by 1/(1-p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if p == 0.0:
        return X
    if p == 1.0:
        return torch.zeros_like(X)
    # Same arithmetic as nn.Dropout on the CPU (a bernoulli_ mask divided by 1-p, then one product),
    # so the two forms of the network give bitwise equal outputs from equally seeded generators.
    mask = torch.empty_like(X).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
    return X * mask
