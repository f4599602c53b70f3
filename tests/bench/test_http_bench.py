"""bench/http_bench.py end to end, briefly: `ours`, `stock` (ours under uvicorn's own protocol)
and `naive` on a tiny checkpoint, concurrency 1 and 4, one second a row. Needs wrk or hey, the
load generators the benchmark drives."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_ours_stock_and_naive_without_errors(tmp_path: Path) -> None:
    if shutil.which("wrk") is None and shutil.which("hey") is None:
        reason = "needs wrk or hey on PATH (Debian: apt-get install wrk hey)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the HTTP benchmark's test: {reason}")
        pytest.skip(reason)
    out = tmp_path / "result.json"
    argv = [
        sys.executable, str(ROOT / "bench" / "http_bench.py"), "--quick",
        "--checkpoint", str(write_tiny_checkpoint(tmp_path / "tiny.safetensors")),
        "--servers", "ours,stock,naive", "--concurrency", "1,4", "--duration", "1",
        "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    head = (
        "| server | endpoint | concurrency | req/s | p50 ms | p99 ms | errors | server CPU us/req |"
    )
    assert head in done.stdout

    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert result["machine"]["cores"] >= 1
    rows = result["rows"]
    assert {(r["server"], r["endpoint"], r["concurrency"]) for r in rows} == {
        (server, endpoint, c)
        for server in ("ours", "stock", "naive")
        for endpoint in ("eval", "uncertainty N=100")
        for c in (1, 4)
    }
    for row in rows:
        assert row["requests"] > 0, row
        assert row["req_per_s"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["errors"] == 0, row
        assert row["server_cpu_us"] > 0, row
