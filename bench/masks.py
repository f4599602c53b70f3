"""Cost per element of drawing a dropout mask: torch's ways against models.masks.MaskSampler.

Run: .venv/bin/python bench/masks.py
"""

import functools
import time
from collections.abc import Callable

import torch

from models.masks import MaskSampler

N = 102_400  # elements: about one N=100 request's mask of 4 x 256 units


def ns_per_element(draw: Callable[[], object], repeats: int = 300) -> float:
    draw()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            draw()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best / N * 1e9


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows: dict[str, Callable[[], object]] = {
        "torch.empty(n).bernoulli_(1 - p)": lambda: torch.empty(N).bernoulli_(0.5, generator=g),
        "torch.rand(n) < 1 - p": lambda: torch.rand(N, generator=g) < 0.5,
    }
    for p in (0.5, 0.25, 0.3):
        sampler = MaskSampler(p)
        rows[f"MaskSampler({p}): {sampler.bits}-bit lanes"] = functools.partial(
            sampler.sample, (N,), g
        )
    print(f"one thread, {N} elements, best of 5 x 300 draws")
    print("| mask | ns per element |\n|---|---|")
    for name, draw in rows.items():
        print(f"| {name} | {ns_per_element(draw):.2f} |")


if __name__ == "__main__":
    main()
