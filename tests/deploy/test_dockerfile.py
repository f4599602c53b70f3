"""The Dockerfile: hadolint-clean, and a HEALTHCHECK that tracks readiness. The image itself is
built and run by scripts/container-smoke.sh (make smoke), which CI runs."""

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import http_server

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(text: str) -> list[str]:
    """Logical lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def runtime_stage() -> list[str]:
    lines = instructions(DOCKERFILE)
    start = lines.index("FROM ${BASE_IMAGE} AS runtime")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM "))
    return lines[start:end]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_runtime_stage_contract() -> None:
    stage = runtime_stage()
    assert "ARG BASE_IMAGE=python:3.11-slim" in instructions(DOCKERFILE)
    (user,) = [line.split()[1] for line in stage if line.startswith("USER ")]
    uid = re.search(r"ARG UID=(\d+)", DOCKERFILE)
    assert uid
    assert user == "${UID}:${UID}"
    assert int(uid.group(1)) >= 1000  # not root, not a system account
    (env,) = [line for line in stage if line.startswith("ENV ")]
    assert "MCDROPOUT_HOST=0.0.0.0" in env.split()  # reachable from outside the container
    assert "MCDROPOUT_MODEL_PATH=/models" in env.split()
    (cmd,) = [line for line in stage if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == ["python", "-m", "service"]  # exec form


def healthcheck_command() -> list[str]:
    (line,) = [line for line in runtime_stage() if line.startswith("HEALTHCHECK ")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


class Health(BaseHTTPRequestHandler):
    status = 200  # what /health/ready answers

    def do_GET(self) -> None:
        code = self.status if self.path == "/health/ready" else 404
        body = b'{"status": "ready"}' if code == 200 else b'{"status": "not ready"}'
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    with http_server(Health) as server:
        yield server


@pytest.mark.parametrize(("ready", "healthy"), [(200, True), (503, False)])
def test_healthcheck_is_healthy_only_when_ready(
    health_server: ThreadingHTTPServer, ready: int, healthy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Health, "status", ready)
    port = health_server.server_address[1]
    # A proxy in the environment must not catch the container's own loopback.
    env = {"MCDROPOUT_PORT": str(port), "http_proxy": "http://127.0.0.1:9"}
    result = subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=30)
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_fails_when_nothing_listens(health_server: ThreadingHTTPServer) -> None:
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    env = {"MCDROPOUT_PORT": str(port)}
    result = subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=30)
    assert result.returncode != 0
