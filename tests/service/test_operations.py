"""Metrics, request ids, JSON logs, the API key and graceful shutdown."""

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from models.checkpoint import save_checkpoint
from models.mlp import MLPConfig, build_model
from service.app import create_app
from service.edge.observability import JsonFormatter
from service.edge.server import Config, Server
from service.settings import Settings
from tests.helpers import images, make_client, wait_ready, write_tiny_checkpoint
from tests.servers import free_port, wait_until_ready
from training.data import LABELS

PREDICT = "/v1/models/tiny/predict"
UNCERTAINTY = "/v1/models/tiny/uncertainty"
MADE_ID = re.compile(r"[0-9a-f]{32}")  # what the server makes where the client sent no plain id


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_batches_samples_and_agreement(client: TestClient) -> None:
    client.post(PREDICT, json={"instances": images(3)})
    client.post(UNCERTAINTY, json={"instances": images(2), "samples": 30, "seed": 1})
    client.get("/v1/models/nope")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    s = samples_of(metrics.text)

    def value(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    route = "/v1/models/{model}/predict"
    assert value("mcdropout_requests_total", route=route, method="POST", status="200") == 1
    assert (
        value("mcdropout_requests_total", route="/v1/models/{model}", method="GET", status="404")
        == 1
    )
    assert value("mcdropout_request_seconds_count", route=route, method="POST") == 1
    assert value("mcdropout_instances_per_request_sum", model="tiny", mode="eval") == 3
    assert value("mcdropout_instances_per_request_sum", model="tiny", mode="mc") == 2
    assert value("mcdropout_mc_samples_sum", model="tiny") == 30
    assert value("mcdropout_agreement_count", model="tiny") == 2
    version = client.get("/v1/models/tiny").json()["version"]
    assert value("mcdropout_model_info", model="tiny", version=version) == 1
    assert value("mcdropout_model_load_failures_total") == 0


def test_load_failures_are_counted(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "good.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with make_client(Settings(model_path=tmp_path)) as c:
        wait_ready(c)
        s = samples_of(c.get("/metrics").text)
        assert s[("mcdropout_model_load_failures_total", frozenset())] == 1


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    made = [client.get("/health/live").headers["x-request-id"] for _ in range(3)]
    assert all(MADE_ID.fullmatch(id_) for id_ in made), made
    assert len(set(made)) == 3  # each request its own
    given = client.get("/health/live", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    hostile = client.get("/health/live", headers={"X-Request-ID": "<script>" + "x" * 200})
    assert MADE_ID.fullmatch(hostile.headers["x-request-id"])
    assert hostile.headers["x-request-id"] not in made
    too_large = client.post(PREDICT, content=b"x" * 300_000, headers={"X-Request-ID": "big-1"})
    assert (too_large.status_code, too_large.headers["x-request-id"]) == (413, "big-1")


def test_each_request_is_logged_as_one_json_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.post(PREDICT, json={"instances": images(1)}, headers={"X-Request-ID": "log-1"})
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "log-1"]
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "request"
    assert line["request_id"] == "log-1"
    assert line["status"] == 200
    assert line["route"] == "/v1/models/{model}/predict"
    assert line["method"] == "POST"
    assert line["duration_ms"] > 0
    assert line["ts"].endswith("Z")


def test_api_key_guards_model_routes_only(model_dir: Path) -> None:
    with make_client(Settings(model_path=model_dir, api_key="s3cret")) as c:
        wait_ready(c)
        for r in (c.get("/v1/models"), c.post(PREDICT, json={"instances": images(1)})):
            assert r.status_code == 401
            assert r.json() == {"detail": "missing or invalid API key"}
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        admin = c.post("/admin/reload")
        assert (admin.status_code, admin.json()) == (401, {"detail": "missing or invalid API key"})
        v2 = c.get("/v2/models/tiny")
        assert (v2.status_code, v2.json()) == (401, {"error": "missing or invalid API key"})
        for open_route in ("/health/live", "/health/ready", "/metrics", "/v2/health/live"):
            assert c.get(open_route).status_code == 200, open_route


def test_draining_turns_readiness_to_503(client: TestClient) -> None:
    client.app.state.registry.drain()  # type: ignore[attr-defined]
    r = client.get("/health/ready")
    assert r.status_code == 503
    assert r.json() == {"status": "not ready", "reason": "shutting down"}
    # Requests that still arrive (in flight, or on open connections) are served.
    assert client.post(PREDICT, json={"instances": images(1)}).status_code == 200


def test_a_signal_drains_then_stops_after_the_delay(model_dir: Path) -> None:
    settings = Settings(model_path=model_dir, shutdown_delay_seconds=0.3)
    drained: list[bool] = []
    server = Server(Config(create_app(settings), settings), lambda: drained.append(True))
    server.handle_exit(signal.SIGTERM, None)
    assert drained == [True]
    # Listening and answering (readiness 503) until the delay is over, then uvicorn's stop.
    assert not asyncio.run(server.on_tick(1))
    assert not server.should_exit
    time.sleep(0.3)
    assert asyncio.run(server.on_tick(1))
    assert not server.force_exit
    server.handle_exit(signal.SIGTERM, None)  # another SIGTERM changes nothing
    assert drained == [True]
    assert not server.force_exit
    server.handle_exit(signal.SIGINT, None)  # a second Ctrl-C stops at once
    assert server.force_exit


def test_sigterm_lets_requests_in_flight_finish_and_exits_0(tmp_path: Path) -> None:
    # A full-size network and large requests, so that they are still running at SIGTERM.
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "big.safetensors", build_model(MLPConfig()), LABELS, {})
    port = free_port()
    env = {
        "MCDROPOUT_MODEL_PATH": str(tmp_path),
        "MCDROPOUT_PORT": str(port),
        "MCDROPOUT_MAX_TOTAL_SAMPLES": "64000",
        "MCDROPOUT_SHUTDOWN_GRACE_SECONDS": "60",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=os.environ | env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url)
        body = {"instances": images(64), "samples": 1000, "seed": 0}

        async def run() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as client:
                calls = [
                    client.post(f"{url}/v1/models/big/uncertainty", json=body) for _ in range(8)
                ]
                pending = [asyncio.ensure_future(c) for c in calls]
                await asyncio.sleep(0.5)  # all eight are in flight: ~0.1 s of CPU each, 2 cores
                proc.send_signal(signal.SIGTERM)
                return [r.status_code for r in await asyncio.gather(*pending)]

        statuses = asyncio.run(run())
        assert statuses == [200] * 8
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, log = proc.communicate(timeout=10)
    assert "Traceback" not in log
