"""Peak memory of one MC request, to check the bound stated in models/engine.py.

Each case runs in a fresh process and reports the growth of peak RSS over a 1-pass warm-up.
Run: .venv/bin/python bench/engine_memory.py
"""

import resource
import subprocess
import sys

import torch

from models.engine import Engine, MCRequest
from models.mlp import MLPConfig, build_model

CASES = [(1, 20_000, 8192), (10, 100_000, 8192), (100, 1_000, 8192), (100, 1_000, 1024)]


def measure(batch: int, samples: int, chunk_rows: int) -> float:
    torch.set_num_threads(1)
    engine = Engine(build_model(MLPConfig()), max_chunk_rows=chunk_rows)
    X = torch.rand(batch, 784)
    engine.uncertainty([MCRequest(X, 1, 0)])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine.uncertainty([MCRequest(X, samples, 0)])
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(f"{measure(*map(int, sys.argv[1:])):.1f}")
    else:
        print("| instances | N | chunk rows | peak RSS growth (MB) |\n|---|---|---|---|")
        for case in CASES:
            args = [sys.executable, __file__, *map(str, case)]
            mb = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
            print(f"| {case[0]} | {case[1]} | {case[2]} | {mb} |")
