"""Why the engines run in a process of their own: what GIL hand-offs cost a one-process server.

Starts `python -m service` with an inference thread running a stand-in for
`service.inference.jobs.execute`,
one variant at a time, and drives the uncertainty endpoint (N = 100, one image a request) with
wrk at one concurrency, reporting throughput and the server's CPU time per request:
- engine: the engine as it is (no patch);
- canned: each MC job answered with one precomputed answer, no work in the inference thread;
- canned, K ops a job: the same, plus K trivial torch operations per MC job in that thread (each
  gives the GIL back and takes it again);
- canned, 40 ops a batch and 2 a job;
- process: the default server, the engines in their own process (no patch).
Run: .venv/bin/python bench/gil_handoffs.py --checkpoint checkpoints/fashion-mlp.safetensors
"""

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from http_bench import (
    ROOT,
    Endpoint,
    Server,
    check_endpoint,
    free_port,
    model_folder,
    running,
    with_server_cpu,
    write_bodies,
)
from loadgen import run_wrk

# name: (torch operations a job, a batch) besides the canned answer; None: the engine, no patch
VARIANTS: dict[str, tuple[int, int] | None] = {
    "engine": None,
    "canned": (0, 0),
    "canned, 10 ops a job": (10, 0),
    "canned, 40 ops a job": (40, 0),
    "canned, 40 ops a batch and 2 a job": (2, 40),
}


def serve(variant: str) -> None:
    """The patched server (run as a subprocess of this script)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from service.__main__ import main
    from service.inference.jobs import Job, Resolve
    from service.inference.jobs import execute as real
    from service.inference.thread import InferenceThread

    spec = VARIANTS[variant]
    if spec is None:
        main()
        return
    per_job, per_batch = spec
    scratch = torch.zeros(100, 10)
    answers: dict[str, Any] = {}

    def execute(jobs: list[Job], resolve: Resolve) -> None:
        evals = [j for j in jobs if j.samples is None]
        if evals:
            real(evals, resolve)
        mc = [j for j in jobs if j.samples is not None]
        for _ in range(per_batch if mc else 0):
            scratch.add_(1.0)
        for job in mc:
            if not answers:  # the first job's real answer, for every job after it
                real([job], lambda _, result, error: answers.update(mc=result))
            for _ in range(per_job):
                scratch.add_(1.0)
            resolve(job, answers["mc"], None)

    main(InferenceThread(execute))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/fashion-mlp.safetensors")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = model_folder(work, args.checkpoint)
        endpoints = write_bodies(work, 100)
        print("| server | endpoint | req/s | p50 ms | p99 ms | errors | server CPU us/req |")
        print("|---|---|---|---|---|---|---|")
        for variant in [*VARIANTS, "process"]:
            port = free_port()
            env = {
                "MCDROPOUT_MODEL_PATH": str(folder),
                "MCDROPOUT_PORT": str(port),
                "MCDROPOUT_LOG_LEVEL": "warning",
            }
            if variant == "process":
                argv = [sys.executable, "-m", "service"]
            else:
                env["MCDROPOUT_INFERENCE"] = "thread"
                argv = [sys.executable, str(Path(__file__).resolve()), "--serve", variant]
            server = Server(
                variant, variant, argv, env, "/health/ready", f"http://127.0.0.1:{port}"
            )
            with running(server, work / "server.log", 120) as pid:
                for endpoint in endpoints:
                    if variant not in ("engine", "process") and endpoint.name == "eval":
                        continue  # the patches change MC jobs only
                    print(row(server, pid, endpoint, args), flush=True)


def row(server: Server, pid: int, endpoint: Endpoint, args: argparse.Namespace) -> str:
    url = server.url + endpoint.path
    check_endpoint(server.url, endpoint)
    run_wrk(url, endpoint.bodies, args.concurrency, 2, 1)  # warm-up
    r = with_server_cpu(
        pid, lambda: run_wrk(url, endpoint.bodies, args.concurrency, args.duration, 1)
    )
    return (
        f"| {server.label} | {endpoint.name} | {r.req_per_s:.1f} | {r.p50_ms:.2f} | "
        f"{r.p99_ms:.2f} | {r.errors} | {r.server_cpu_us:.0f} |"
    )


if __name__ == "__main__":
    main()
