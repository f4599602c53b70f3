"""Where one MC request's time goes: torch's profiler over repeated requests (B=1, N=100).

Run: .venv/bin/python bench/engine_profile.py [--batch 1] [--samples 100] [--threads 1]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from models.engine import Engine, MCRequest
from models.mlp import MLPConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    engine = Engine(build_model(MLPConfig()))
    request = MCRequest(torch.rand(args.batch, 784), args.samples, 0)
    for _ in range(50):
        engine.uncertainty([request])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.repeats):
            engine.uncertainty([request])
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=24
    )
    print(f"{args.repeats} requests, B={args.batch}, N={args.samples}, {args.threads} thread(s)")
    print(table)


if __name__ == "__main__":
    main()
