"""The soak of issue 5, small enough for CI: bench/load.py against a real server, three rounds,
zero errors, and the server's RSS after round 3 within 25 MB of its RSS after round 1."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.soak
def test_rss_stays_within_its_bound_and_no_request_fails(tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    command = [sys.executable, "bench/load.py", "--checkpoint", str(checkpoint)]
    command += ["--requests", "1000", "--concurrency", "16", "--samples", "20"]
    command += ["--rounds", "3", "--max-rss-growth-mb", "25"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout + run.stderr
    rounds = [line for line in run.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 3
    assert all("errors 0," in line and "statuses {200: 1000}" in line for line in rounds)
    assert "(bound 25 MB): within" in run.stdout
    assert "server exit code after SIGTERM: 0" in run.stdout
