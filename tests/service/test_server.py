"""End to end: `python -m service` under uvicorn on 127.0.0.1, driven by httpx."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {"MCDROPOUT_MODEL_PATH": str(model_dir), "MCDROPOUT_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM to report how it was stopped.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_eval_answers_are_unchanged_by_concurrent_mc(server: str) -> None:
    x = np.random.default_rng(5).random((4, 784)).tolist()
    predict = f"{server}/v1/models/tiny/predict"
    uncertainty = f"{server}/v1/models/tiny/uncertainty"

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            baseline = await client.post(predict, json={"instances": x})
            calls = []
            for i in range(24):
                calls.append(client.post(predict, json={"instances": x}))
                body = {"instances": x, "samples": 500, "seed": i % 3}
                calls.append(client.post(uncertainty, json=body))
            responses = await asyncio.gather(*calls)
            return list(responses[0::2]), list(responses[1::2]), baseline

    evals, mcs, baseline = asyncio.run(run())
    assert baseline.status_code == 200
    assert all(r.status_code == 200 for r in evals + mcs)
    assert all(r.json() == baseline.json() for r in evals)
    # The same seed gives the same numbers however the requests interleave.
    by_seed: dict[int, object] = {}
    for r in mcs:
        body = r.json()
        assert body["samples"] == 500
        assert by_seed.setdefault(body["seed"], body) == body
    assert len(by_seed) == 3
