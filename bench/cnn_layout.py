"""Time of the default CNN (models/cnn.py) in each memory layout: a training step (SGD, batch
128) and an eval-mode embed of 1 and of 256 images. DropoutCNN keeps its weights channels-last.

Run: .venv/bin/python bench/cnn_layout.py [--threads N]
"""

import argparse
import functools
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from models.cnn import CNNConfig, DropoutCNN

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def best_ms(step: Callable[[], object], repeats: int, rounds: int = 5) -> float:
    step()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e3


def timings(layout: torch.memory_format) -> dict[str, float]:
    torch.manual_seed(0)
    model = DropoutCNN(CNNConfig())
    model.to(memory_format=layout)  # type: ignore[call-overload]  # (torch's stubs lack it)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.rand(128, 784), torch.randint(0, 10, (128,))

    def train_step() -> None:
        loss = F.cross_entropy(model(X), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    model.train()
    out = {"train step, batch 128": best_ms(train_step, 10)}
    model.eval()
    with torch.inference_mode():
        for batch in (1, 256):
            embed = functools.partial(model.embed, torch.rand(batch, 784))
            out[f"eval embed, batch {batch}"] = best_ms(embed, 20)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    threads = p.parse_args().threads
    if threads is not None:
        torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of 5 rounds (ms)")
    results = {name: timings(layout) for name, layout in LAYOUTS.items()}
    print(f"| {'':24} | " + " | ".join(f"{name:>13}" for name in results) + " |")
    for row in results["contiguous"]:
        cells = " | ".join(f"{results[name][row]:13.2f}" for name in results)
        print(f"| {row:24} | {cells} |")


if __name__ == "__main__":
    main()
