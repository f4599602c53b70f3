"""Real servers for end-to-end tests: `python -m service` under uvicorn on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def wait_for(
    url: str, route: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll GET url+route until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}{route}").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc is None or proc.poll() is None, "the server exited"
        assert time.monotonic() < deadline, f"{route} did not answer 200 in {timeout} s"
        time.sleep(0.05)


def wait_until_ready(url: str, timeout: float = 60) -> None:
    wait_for(url, "/health/ready", timeout)


# The limits of tests/service/conftest.py's settings, so that both suites probe the same edges.
LIMITS = {
    "MAX_INSTANCES": "8",
    "DEFAULT_SAMPLES": "20",
    "MAX_SAMPLES": "500",
    "MAX_TOTAL_SAMPLES": "1000",
    "MAX_BODY_BYTES": "200000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    model_path: Path, settings: dict[str, str] | None = None, log: Path | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    """(URL, process) of a new `python -m service` in a session (and process group) of its
    own, once live. Its log (JSON lines) goes to `log` if given, at the settings' LOG_LEVEL."""
    port = free_port()
    env = os.environ | {
        "MCDROPOUT_MODEL_PATH": str(model_path),
        "MCDROPOUT_PORT": str(port),
        "MCDROPOUT_LOG_LEVEL": "warning",
        "MCDROPOUT_SHUTDOWN_DELAY_SECONDS": "0.2",  # tests stop many servers
    }
    env |= {f"MCDROPOUT_{name}": value for name, value in (settings or {}).items()}
    stderr = log.open("ab") if log else None
    try:
        argv = [sys.executable, "-m", "service"]
        proc = subprocess.Popen(argv, env=env, stderr=stderr, start_new_session=True)
    finally:
        if stderr is not None:
            stderr.close()  # the server has its own copy
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, "/health/live", proc=proc)
    except BaseException:
        proc.kill()
        raise
    return url, proc


@contextmanager
def serve_process(
    model_path: Path, settings: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(URL, process) once the server is live (ready or not: see wait_until_ready)."""
    url, proc = start_server(model_path, settings, log)
    try:
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # a graceful stop (service/edge/server.py)


@contextmanager
def serve(model_path: Path, settings: dict[str, str] | None = None) -> Iterator[str]:
    """The server's URL once it is live."""
    with serve_process(model_path, settings) as (url, _):
        yield url
