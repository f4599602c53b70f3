"""Prometheus metrics, request ids and JSON logs."""

import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
# A client's id is echoed and logged, so only a short, plain one is taken as it is.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # instances, requests
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

access_log = logging.getLogger("service.access")


class Metrics:
    """One set per app (tests build several apps in one process), each in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def histogram(
            name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(name, documentation, labels, buckets=buckets, registry=r)

        self.requests = Counter(
            "mcdropout_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = histogram(
            "mcdropout_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            _LATENCY_BUCKETS,
        )
        self.in_flight = Gauge("mcdropout_requests_in_flight", "Requests being served", registry=r)
        self.instances = histogram(
            "mcdropout_instances_per_request",
            "Instances (batch size) per inference request",
            ["model", "mode"],
            _SIZE_BUCKETS,
        )
        self.samples = histogram(
            "mcdropout_mc_samples",
            "MC passes N per uncertainty request",
            ["model"],
            (1, 10, 30, 100, 300, 1000, 3000, 10000),
        )
        self.agreement = histogram(
            "mcdropout_agreement",
            "Agreement of MC answers",
            ["model"],
            (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
        )
        self.queue_depth = Gauge(
            "mcdropout_queue_depth", "Inference requests waiting for the worker", registry=r
        )
        self.batch_requests = histogram(
            "mcdropout_batch_requests",
            "Requests merged into one engine call",
            ["mode"],
            _SIZE_BUCKETS[:9],
        )
        self.batch_instances = histogram(
            "mcdropout_batch_instances", "Instances in one engine call", ["mode"], _SIZE_BUCKETS
        )
        self.rejected = Counter(
            "mcdropout_rejected_requests",
            "Inference requests refused (queue full) or timed out",
            ["reason"],
            registry=r,
        )
        self.load_failures = Counter(
            "mcdropout_model_load_failures", "Checkpoints refused at load", registry=r
        )
        self.model_info = Gauge(
            "mcdropout_model_info", "Served models (value 1)", ["model", "version"], registry=r
        )


def request_ids() -> Iterator[str]:
    """Unique ids, cheaply: a random prefix per process, then a counter (uuid4 per request
    reads the OS's random source each time, a system call on the event loop)."""
    prefix = uuid.uuid4().hex[:16]
    return (f"{prefix}{n:016x}" for n in itertools.count())


class RequestContext:
    """Gives each request an id (the client's X-Request-ID if it is plain, else a new one),
    echoes it in the response, counts and times the request, and logs one JSON line for it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.ids = request_ids()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _SAFE_ID.fullmatch(given) else next(self.ids)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            # The route template, not the path: a label per model name or typo would be unbounded.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # UTC, as the Z says
    # Attributes every record has, and uvicorn's ANSI-coloured copy of its message.
    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in self._STANDARD}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the service's and uvicorn's loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
