"""Schemathesis against a real server: positive and negative cases generated from the OpenAPI
schema; every response must be documented, match its schema, and none may be a 5xx."""

import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import LIMITS, serve, wait_until_ready


def test_openapi_fuzzing_finds_nothing(model_dir: Path, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    # instances x samples (a product) is the one limit JSON Schema cannot state; with it at
    # max_instances x max_samples, every schema-valid request must be answered.
    limits = LIMITS | {
        "MAX_TOTAL_SAMPLES": str(int(LIMITS["MAX_INSTANCES"]) * int(LIMITS["MAX_SAMPLES"]))
    }
    with serve(model_dir, limits) as url:
        wait_until_ready(url)
        paths = httpx.get(f"{url}/openapi.json").json()["paths"]
        operations = sum(len(methods) for methods in paths.values())
        result = subprocess.run(
            [
                str(schemathesis),
                "run",
                f"{url}/openapi.json",
                "--checks=all",
                "--mode=all",  # positive and negative cases
                "--max-examples=25",
                "--seed=1",
                "--wait-for-schema=30",
                f"--report-dir={tmp_path}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert f"Selected: {operations}/{operations}" in summary  # every operation was exercised
    assert " generated, " in summary
