"""Load and soak: many requests at a fixed concurrency against a real `python -m service` on
127.0.0.1, counting errors and watching the server's resident memory.

Run: .venv/bin/python bench/load.py --checkpoint checkpoints/fashion-mlp.safetensors \
        --requests 10000 --concurrency 32
Each request carries one test-like image; --mc-share of them are uncertainty requests (N=100).
Soak: --rounds 3 --max-rss-growth-mb 25 fails (exit 1) if the server's RSS grows by more than
that from the end of the first round (a warm server) to the end of the last.
"""

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from peak_rss import tree_mb


def rss_mb(pid: int) -> float:
    """The server's RSS with its children's (the inference process)."""
    return tree_mb(pid, "VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def drive(
    url: str, total: int, concurrency: int, mc_share: float, samples: int
) -> tuple[list[float], dict[int, int], int]:
    rng = np.random.default_rng(0)
    images = rng.random((64, 784)).round(4).tolist()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        for i in counter:
            mc = (i % 1000) < mc_share * 1000
            path = "uncertainty" if mc else "predict"
            body: dict[str, object] = {"instances": [images[i % 64]]}
            if mc:
                body |= {"samples": samples, "seed": i}
            start = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/models/bench/{path}", json=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            except httpx.HTTPError:
                failures += 1
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies, statuses, failures


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--mc-share", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1, help="repeat, for a soak: RSS after each")
    p.add_argument("--max-rss-growth-mb", type=float, help="the soak's bound (needs 2+ rounds)")
    args = p.parse_args()

    folder = Path(tempfile.mkdtemp())
    (folder / "bench.safetensors").symlink_to(args.checkpoint.resolve())
    port = free_port()
    env = os.environ | {
        "MCDROPOUT_MODEL_PATH": str(folder),
        "MCDROPOUT_PORT": str(port),
        "MCDROPOUT_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        print(
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"client and server on the same machine"
        )
        start_rss = rss_mb(server.pid)
        print(f"server RSS after start: {start_rss:.0f} MB")
        rss: list[float] = []
        errors_total = 0
        for round_ in range(1, args.rounds + 1):
            started = time.perf_counter()
            latencies, statuses, failures = asyncio.run(
                drive(url, args.requests, args.concurrency, args.mc_share, args.samples)
            )
            wall = time.perf_counter() - started
            q = statistics.quantiles(latencies, n=100)
            errors = failures + sum(n for code, n in statuses.items() if code != 200)
            errors_total += errors
            rss.append(rss_mb(server.pid))
            print(
                f"round {round_}: {args.requests} requests, concurrency {args.concurrency}, "
                f"{args.mc_share:.0%} uncertainty (N={args.samples}): "
                f"{args.requests / wall:.0f} req/s, p50 {q[49] * 1e3:.1f} ms, "
                f"p99 {q[98] * 1e3:.1f} ms, errors {errors}, statuses {statuses}, "
                f"server RSS {rss[-1]:.0f} MB"
            )
    finally:
        server.send_signal(signal.SIGTERM)
        print(f"server exit code after SIGTERM: {server.wait(timeout=60)}")
    failed = errors_total > 0
    if args.max_rss_growth_mb is not None and len(rss) >= 2:
        growth = rss[-1] - rss[0]
        within = growth <= args.max_rss_growth_mb
        print(
            f"soak: RSS grew {growth:.1f} MB from round 1 to round {len(rss)} "
            f"(bound {args.max_rss_growth_mb:g} MB): {'within' if within else 'OVER'}"
        )
        failed |= not within
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
