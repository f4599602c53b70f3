"""Engine micro-benchmark: one MC-dropout request, ours against the usual ways of doing it.

- naive: the tutorial way, a copy of the model in train() mode and a Python loop of N forwards;
- replicate: Baal's replicate-in-batch, the input repeated N times and one forward in train mode;
- ours: models.engine.Engine.uncertainty;
- floor: the request's fp32 FLOPs at the GEMM throughput measured in the same run.
All three produce the same statistics (models.stats). Times are medians of repeated runs.
Run: .venv/bin/python bench/engine.py [--threads 1] [--quick]
"""

import argparse
import copy
import itertools
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from models.engine import Engine, MCRequest
from models.mlp import DropoutMLP, MLPConfig, build_model
from models.stats import UncertaintyStats, summarize


def naive(model: DropoutMLP, X: torch.Tensor, n: int) -> UncertaintyStats:
    model.train()
    with torch.no_grad():
        probs = torch.stack([F.softmax(model(X), dim=-1) for _ in range(n)])
    return summarize(probs)


def replicate(model: DropoutMLP, X: torch.Tensor, n: int) -> UncertaintyStats:
    model.train()
    with torch.no_grad():
        logits = model(X.repeat(n, 1)).view(n, X.shape[0], -1)
    return summarize(F.softmax(logits, dim=-1))


def seconds(fn: Callable[[], object], budget: float) -> float:
    fn()  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 1000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_flops_per_second() -> float:
    a, b = torch.rand(8192, 256), torch.rand(256, 256)
    return 2 * 8192 * 256 * 256 / seconds(lambda: a @ b, 1.0)


def request_flops(config: MLPConfig, batch: int, n: int) -> float:
    # Ours runs the first layer once per request and the others once per pass.
    sizes = config.sizes
    first = 2 * batch * sizes[0] * sizes[1]
    rest = sum(2 * batch * n * i * o for i, o in itertools.pairwise(sizes[1:]))
    return first + rest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="B=1, N=100 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MLPConfig()
    model = build_model(config)
    engine = Engine(copy.deepcopy(model))
    peak = gemm_flops_per_second()
    cases = [(1, 100)] if args.quick else [(b, n) for b in (1, 32, 256) for n in (10, 100, 1000)]
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), GEMM {peak / 1e9:.0f} GFLOP/s"
    )
    print(
        "| B | N | naive ms | replicate ms | ours ms | floor ms | naive/ours | "
        "replicate/ours | ours/floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, n in cases:
        print(row(model, engine, config, peak, batch, n))


def row(
    model: DropoutMLP, engine: Engine, config: MLPConfig, peak: float, batch: int, n: int
) -> str:
    X = torch.rand(batch, 784)
    budget = 2.0 if batch * n <= 3200 else 4.0
    t_naive = seconds(lambda: naive(model, X, n), budget)
    t_rep = seconds(lambda: replicate(model, X, n), budget)
    t_ours = seconds(lambda: engine.uncertainty([MCRequest(X, n, 0)]), budget)
    floor = request_flops(config, batch, n) / peak
    return (
        f"| {batch} | {n} | {t_naive * 1e3:.3f} | {t_rep * 1e3:.3f} | {t_ours * 1e3:.3f} | "
        f"{floor * 1e3:.4f} | {t_naive / t_ours:.1f} | {t_rep / t_ours:.1f} | "
        f"{t_ours / floor:.1f} |"
    )


if __name__ == "__main__":
    main()
