"""The inputs of the shift and out-of-distribution sections: the test images rotated or with
noise added (Ovadia et al. 2019), and sets the model never saw (handwritten digits, noise,
inverted test images)."""

import math

import torch
from torch.nn import functional as F

ROTATIONS = tuple(range(0, 181, 15))
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def rotate(X: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate [n, 784] images about their centre (bilinear, zeros outside)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    images = X.reshape(-1, 1, 28, 28)
    grid = F.affine_grid(theta.expand(len(X), 2, 3), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(len(X), -1).clamp(0.0, 1.0)


def add_noise(X: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed))
    return (X + sigma * noise).clamp(0.0, 1.0)


def digits_28x28(box: int = 20) -> torch.Tensor:
    """scikit-learn's 1,797 handwritten digits (8x8, ink 0..16 on a 0 background), bilinearly
    upscaled to box x box and centred in 28x28, in [0, 1]: a light object on a dark background,
    like Fashion-MNIST. box=20 frames them as MNIST does (a 20x20 digit, 4 empty pixels around
    it); box=28 stretches them over the whole frame."""
    from sklearn.datasets import load_digits

    if not 8 <= box <= 28:
        raise ValueError(f"box must be in [8, 28], got {box}")
    images = torch.from_numpy(load_digits().images).float().div(16.0)[:, None]
    big = F.interpolate(images, size=(box, box), mode="bilinear", align_corners=False)
    margin = (28 - box) // 2
    big = F.pad(big, (margin, 28 - box - margin, margin, 28 - box - margin))
    return big.reshape(len(big), -1).clamp(0.0, 1.0)


def ood_sets(test_X: torch.Tensor, limit: int | None, seed: int) -> dict[str, torch.Tensor]:
    n = min(len(test_X), 2000)
    sets = {
        "digits": digits_28x28(box=20),  # framed as MNIST frames its digits
        "digits_full_frame": digits_28x28(box=28),
        "uniform_noise": torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)),
    }
    return {k: v[:limit] if limit else v for k, v in sets.items()} | {"inverted": 1.0 - test_X}
