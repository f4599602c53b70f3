"""The HTTP server: uvicorn with httptools, with the limits uvicorn lacks, and the shutdown that
load balancers need.

uvicorn's httptools protocol buffers a request's line and headers without limit and for as long
as the client likes: Guarded adds a size limit (431) and a time limit (408) on them, counted from
the connection's start or the request's first byte, and answers 503 past max_connections
connections. Keep-alive idle connections close after keep_alive_seconds (uvicorn's timer).

On SIGTERM or SIGINT, Server turns readiness to 503 at once and keeps listening, and answering,
for shutdown_delay_seconds, so that load balancers see it and stop sending; then uvicorn stops
listening, lets requests in flight finish within shutdown_grace_seconds, and the process exits
0. A second SIGINT stops at once. The inference process ignores both signals (a terminal's
Ctrl-C and systemd's stop signal the whole process group): the server stops it once drained.
"""

import asyncio
import json
import signal
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.edge import RETRY_AFTER
from service.settings import Settings

Headers = list[tuple[bytes, bytes]]


def refusal(status: int, message: str, *extra: tuple[bytes, bytes]) -> tuple[int, Headers, bytes]:
    """A response that closes the connection, in the v1 error form: status, headers, body."""
    body = json.dumps({"detail": message}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    return status, headers, body


def encoded(status: int, headers: Headers, body: bytes) -> bytes:
    """The response's bytes, for a request uvicorn has not handed to an app."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def replying(status: int, headers: Headers, body: bytes) -> ASGIApp:
    """An app that sends the response, for a request uvicorn has parsed."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class Config(uvicorn.Config):
    """uvicorn's configuration with the service's settings, which Guarded reads."""

    def __init__(self, app: Any, settings: Settings, **options: Any) -> None:
        self.settings = settings
        super().__init__(
            app,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=Guarded,
            timeout_keep_alive=settings.keep_alive_seconds,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
            log_config=None,  # keep the service's JSON logging
            access_log=False,  # service.access logs each request, with its id
            **options,
        )


class Guarded(HttpToolsProtocol):
    """uvicorn's httptools protocol, with limits on each request's line and headers (size and
    time) and on the connections open at once (see the module's text)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        assert isinstance(config, Config), "Guarded reads service.edge.server.Config's settings"
        settings = config.settings
        self.max_head = settings.max_header_bytes
        self.too_long = f"the request line and headers exceed {self.max_head} bytes"
        self.head_timeout = settings.header_timeout_seconds
        self.max_connections = settings.max_connections
        self.in_head = True  # between a request's first byte (or the connection's start) and
        self.head_bytes = 0  # the end of its headers: the bytes received meanwhile
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._start_head_timer()  # a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_timer is None:
                self._start_head_timer()
        super().data_received(data)
        # Still in the headers after all these bytes: all of them are the headers'.
        if self.in_head and self.head_bytes > self.max_head:
            self._refuse(431, self.too_long)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._stop_head_timer()
        refused = None
        if self._head_size() > self.max_head:  # all of it came in one read
            refused = refusal(431, self.too_long)
        elif len(self.connections) > self.max_connections:
            refused = refusal(
                503,
                f"overloaded: the server holds {self.max_connections} connections; retry later",
                *((name.lower().encode(), value.encode()) for name, value in RETRY_AFTER.items()),
            )
        if refused is None:
            super().on_headers_complete()
            return
        # uvicorn runs the request's app as usual: this one answers, and the answer closes.
        app, self.app = self.app, replying(*refused)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _head_size(self) -> int:
        """The request line and headers as uvicorn parsed them (": " and CRLF included)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head, self.head_bytes = True, 0  # the next request's timer starts at its bytes

    def _start_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.in_head and not self.transport.is_closing():
            if self.head_bytes:
                timeout = f"{self.head_timeout:g}"
                self._refuse(408, f"the request headers did not arrive within {timeout} s")
            else:
                self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answers and closes, unless an answer to an earlier request is still being written
        (pipelining): then it only closes."""
        self._stop_head_timer()
        self.in_head = False
        if self.transport.is_closing():  # uvicorn answered already (a malformed request)
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(encoded(*refusal(status, message)))
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, with the shutdown of the module's text."""

    def __init__(self, config: Config, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay = config.settings.shutdown_delay_seconds
        self.stop_at: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not uvicorn's: it re-raises the signal once stopped, and the process ends with 143.
        if self.stop_at is None:
            self.drain()
            self.stop_at = time.monotonic() + self.delay
        elif sig == signal.SIGINT:
            self.should_exit = self.force_exit = True  # a second Ctrl-C: now

    async def on_tick(self, counter: int) -> bool:
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)
