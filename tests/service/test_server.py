"""End to end: `python -m service` under uvicorn on 127.0.0.1, driven by httpx."""

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import serve_process, wait_until_ready


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with serve_process(model_dir) as (url, process):
        wait_until_ready(url)
        yield url, process


@pytest.fixture(scope="module")
def server(served: tuple[str, subprocess.Popen[bytes]]) -> str:
    return served[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_server_parses_http_with_httptools_on_uvloop(
    served: tuple[str, subprocess.Popen[bytes]],
) -> None:
    # uvicorn imports them only to use them; pyproject.toml installs both.
    maps = Path(f"/proc/{served[1].pid}/maps").read_text()
    assert "/httptools/parser/parser." in maps
    assert "/uvloop/loop." in maps


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
