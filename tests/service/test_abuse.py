"""Hostile and clumsy clients against a real server over real sockets (issue 17): stalled and
trickled bodies, compressed floods and bombs, huge and slow headers, idle connections, the
connection limit, signals to the whole process group, the other input paths. Each attack runs
while other clients are served, and each test asserts what the attacker got, what the others
got, and what the server kept (its memory, its metrics, its log)."""

import asyncio
import gzip
import io
import json
import os
import re
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from models.checkpoint import save_checkpoint
from models.mlp import MLPConfig, build_model
from tests.helpers import images
from tests.servers import LIMITS, serve_process, start_server, wait_until_ready
from training.data import LABELS

BODY_TIMEOUT = 1.5
HEADER_TIMEOUT = 1.5
MAX_HEADER = 4096
MAX_CONNECTIONS = 48
SETTINGS = LIMITS | {
    "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "KEEP_ALIVE_SECONDS": "1",
    "MAX_HEADER_BYTES": str(MAX_HEADER),
    "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "MAX_BODY_BYTES_IN_FLIGHT": "400000",  # room for two bodies of MAX_BODY_BYTES
    "MAX_IMAGE_SIDE": "4096",
    "LOG_LEVEL": "info",
}
MAX_BODY = int(LIMITS["MAX_BODY_BYTES"])
PREDICT = "/v1/models/tiny/predict"
UNCERTAINTY = "/v1/models/tiny/uncertainty"
INFER = "/v2/models/tiny/infer"
IMAGE = "/v1/models/tiny/uncertainty/image"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("abuse") / "server.log"


@pytest.fixture(scope="module")
def served(model_dir: Path, log: Path) -> Iterator[tuple[str, int]]:
    with serve_process(model_dir, SETTINGS, log) as (url, proc):
        wait_until_ready(url)
        yield url, proc.pid


@pytest.fixture(scope="module")
def url(served: tuple[str, int]) -> str:
    return served[0]


# ----------------------------------------------------------------------------- helpers


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 0).save(out, "PNG")
    return out.getvalue()


def legit_requests(url: str) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    """One well-formed request per kind of POST route, each expected to answer 200."""
    x = images(1)
    v2 = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": x[0]}]}
    return {
        "predict": lambda c: c.post(url + PREDICT, json={"instances": x}),
        "uncertainty": lambda c: c.post(url + UNCERTAINTY, json={"instances": x, "seed": 1}),
        "v2 infer": lambda c: c.post(url + INFER, content=json.dumps(v2)),
        "image": lambda c: c.post(url + IMAGE, files={"file": ("a.png", png(28, 28))}),
    }


def served_meanwhile(url: str, rounds: int = 3) -> list[int]:
    """The statuses of `rounds` rounds of legit requests, each given 5 s at most."""
    with httpx.Client(timeout=5) as client:
        return [
            call(client).status_code for _ in range(rounds) for call in legit_requests(url).values()
        ]


class Raw:
    """A client on a plain socket, to send what no HTTP library sends."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def answer(self, timeout: float = 10) -> tuple[int | None, bytes]:
        """(status, body) of what the server sends until it closes; None if it sent nothing."""
        self.sock.settimeout(timeout)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        finally:
            self.sock.close()
        if not data:
            return None, b""
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def close(self) -> None:
        self.sock.close()


def post_head(path: str, length: int) -> bytes:
    """A POST's line and headers and the start of a valid body, of the content type its route
    reads: the rest is up to the test."""
    if path == IMAGE:
        kind = "multipart/form-data; boundary=b"
        start = '--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    else:
        kind, start = "application/json", '{"instances": [[0.1, 0.2'
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {length}\r\n\r\n{start}"
    ).encode()


def status_counts(url: str) -> dict[str, float]:
    """mcdropout_requests_total by status, all routes together."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "mcdropout_requests_total":
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0.0) + sample.value
    return counts


@contextmanager
def peak_rss(pid: int) -> Iterator[list[float]]:
    """[MB the process's resident memory grew at most] while the block runs (polled)."""

    def rss() -> float:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    start, peak, done = rss(), [0.0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    grown: list[float] = []
    try:
        yield grown
    finally:
        done.set()
        poller.join()
        grown.append(max(peak[0], rss()) - start)


# ----------------------------------------------------------------------------- bodies


def test_stalled_and_trickled_bodies_get_408_and_stop_no_one(url: str) -> None:
    before = status_counts(url)
    routes = [PREDICT, UNCERTAINTY, INFER, IMAGE]
    # Two connections per route that declare a whole body of the limit and send one byte...
    stalled = [Raw(url) for _ in range(2 * len(routes))]
    for conn, route in zip(stalled, routes * 2, strict=True):
        assert conn.send(post_head(route, MAX_BODY))
    # ... and one per route that trickles a byte every 0.2 s, forever.
    trickled = [Raw(url) for _ in routes]
    for conn, route in zip(trickled, routes, strict=True):
        assert conn.send(post_head(route, MAX_BODY))
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):
            for conn in trickled:
                conn.send(b"0")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    answers: list[tuple[int | None, bytes]] = []
    try:
        # Meanwhile every POST route answers, a body of nearly the limit too: the stalled
        # connections hold their one byte of the budget, not the length they declared.
        assert served_meanwhile(url) == [200] * 12
        big = {"instances": np.random.default_rng(1).random((8, 784)).tolist()}
        assert MAX_BODY / 2 < len(json.dumps(big)) < MAX_BODY
        assert httpx.post(url + PREDICT, json=big, timeout=5).status_code == 200
        answers = [conn.answer() for conn in stalled + trickled]
    finally:
        stop.set()
        trickler.join()
        for conn in stalled + trickled:
            conn.close()
    message = f'{{"detail":"the request body did not arrive within {BODY_TIMEOUT:g} s"}}'
    v2_message = f'{{"error":"the request body did not arrive within {BODY_TIMEOUT:g} s"}}'
    for (status, body), route in zip(answers, routes * 3, strict=True):
        assert status == 408, route
        assert body.decode() == (v2_message if route == INFER else message)
    # Every one of them counted; the connections closed (answer() read to the end).
    after = status_counts(url)
    assert after.get("408", 0) - before.get("408", 0) == 12
    assert after.get("500", 0) == before.get("500", 0)


def test_mid_body_hang_ups_are_499_on_every_route_never_500(url: str, log: Path) -> None:
    before = status_counts(url)
    for route in (PREDICT, UNCERTAINTY, INFER, IMAGE):
        conn = Raw(url)
        assert conn.send(post_head(route, 5000))
        time.sleep(0.2)  # the route is reading its body
        conn.close()
    deadline = time.monotonic() + 10
    while status_counts(url).get("499", 0) - before.get("499", 0) < 4:
        assert time.monotonic() < deadline, status_counts(url)
        time.sleep(0.05)
    assert status_counts(url).get("500", 0) == before.get("500", 0)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    hang_ups = [e for e in lines if "closed the connection before its body" in e["msg"]]
    assert len(hang_ups) >= 4
    assert {e["level"] for e in hang_ups} == {"info"}
    assert not [e for e in lines if e["level"] == "error" or "exc" in e]


def test_a_body_over_the_limit_is_413_and_closes(url: str) -> None:
    conn = Raw(url)
    conn.send(post_head(PREDICT, MAX_BODY + 1))
    status, body = conn.answer()
    assert status == 413
    assert json.loads(body) == {"detail": f"request body exceeds the limit of {MAX_BODY} bytes"}


def gzip_v2_body(inflated: int) -> bytes:
    """A valid V2 request padded with spaces to `inflated` bytes, gzipped (a few KB)."""
    tensor = {"name": "images", "datatype": "FP32", "shape": [1, 784], "data": [0.5] * 784}
    text = json.dumps({"inputs": [tensor]}).encode()
    return gzip.compress(text + b" " * (inflated - len(text)))


def test_compressed_floods_are_counted_inflated(model_dir: Path, tmp_path: Path) -> None:
    limit, budget = 4 * 1024 * 1024, 8 * 1024 * 1024
    settings = {"MAX_BODY_BYTES": str(limit), "MAX_BODY_BYTES_IN_FLIGHT": str(budget)}
    with serve_process(model_dir, settings) as (url, proc):
        wait_until_ready(url)
        packed = gzip_v2_body(limit - 100)
        assert len(packed) < 10_000  # 4 MiB of JSON once inflated
        plain = json.dumps({"instances": images(60)}).encode()  # about 1 MB

        async def flood() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as client:
                gzipped = [
                    client.post(url + INFER, content=packed, headers={"Content-Encoding": "gzip"})
                    for _ in range(40)
                ]
                plains = [
                    client.post(
                        url + PREDICT, content=plain, headers={"Content-Type": "application/json"}
                    )
                    for _ in range(20)
                ]
                return [r.status_code for r in await asyncio.gather(*gzipped, *plains)]

        httpx.post(url + INFER, content=packed, headers={"Content-Encoding": "gzip"})  # warm-up
        with peak_rss(proc.pid) as grown:
            statuses = asyncio.run(flood())
        assert statuses == [200] * 60
        # 40 x 4 MiB inflated (and its copies) would be hundreds of MB: the budget holds 8 MiB
        # of bodies at once, and a request keeps only its pixels while it waits for the engine.
        assert grown[0] < 120, grown


def test_compression_bombs_stop_at_the_limit(url: str) -> None:
    bomb = gzip.compress(b" " * 100_000_000)  # 100 MB of spaces in about 100 KB
    assert len(bomb) < MAX_BODY
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    for route in (PREDICT, INFER):
        r = httpx.post(url + route, content=bomb, headers=gz, timeout=10)
        assert r.status_code == 413
        assert f"exceeds the limit of {MAX_BODY} bytes once inflated" in r.text
    # A stream of empty deflate blocks inflates to nothing, forever: its raw bytes count too.
    empty = zlib.compress(b"")[:2] + b"\x00\x00\x00\xff\xff" * (MAX_BODY // 5 + 1)
    r = httpx.post(url + INFER, content=empty, headers={"Content-Encoding": "deflate"}, timeout=10)
    assert (r.status_code, r.json()) == (
        413,
        {"error": f"request body exceeds the limit of {MAX_BODY} bytes"},
    )
    r = httpx.post(url + PREDICT, content=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 415


# ----------------------------------------------------------------------------- headers


def test_huge_and_slow_headers_are_refused_and_idle_connections_closed(
    served: tuple[str, int],
) -> None:
    url, pid = served
    with peak_rss(pid) as grown:
        # Four connections sending a megabyte of headers each, never finished: refused at the
        # limit, the rest never read.
        endless = [Raw(url) for _ in range(4)]
        for conn in endless:
            conn.send(b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Pad: ")
        for _ in range(16):
            for conn in endless:
                conn.send(b"a" * 64 * 1024)
        answers = [conn.answer() for conn in endless]
    assert grown[0] < 20
    expected = f'{{"detail":"the request line and headers exceed {MAX_HEADER} bytes"}}'
    assert answers == [(431, expected.encode())] * 4
    # The same in one piece, complete: the headers are parsed, and refused.
    whole = Raw(url)
    whole.send(b"GET /health/live HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEADER + b"\r\n\r\n")
    assert whole.answer() == (431, expected.encode())
    # A header line every 0.3 s: 408 once the headers have taken HEADER_TIMEOUT.
    slow = Raw(url)
    slow.send(b"GET /health/live HTTP/1.1\r\n")
    for i in range(8):
        time.sleep(0.3)
        if not slow.send(f"X-{i}: {i}\r\n".encode()):
            break
    status, body = slow.answer()
    assert status == 408
    assert b"the request headers did not arrive within" in body
    # A connection that sends nothing, and one idle after a request, are closed.
    idle = Raw(url)
    assert idle.answer() == (None, b"")
    kept = Raw(url)
    kept.send(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
    status, body = kept.answer()  # the answer, then the keep-alive timeout closes it
    assert status == 200
    assert body.endswith(b'{"status":"live"}')


def test_past_the_connection_limit_503_then_served_again(url: str) -> None:
    held = [Raw(url) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    try:
        r = httpx.get(url + "/health/live", headers={"Connection": "close"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "overloaded: the server holds 48 connections" in r.json()["detail"]
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.2)
    assert httpx.get(url + "/health/live").status_code == 200


# ----------------------------------------------------------------------------- other paths


def test_every_input_path_is_as_strict(url: str) -> None:
    # UTF-16 and UTF-32 JSON: refused, wherever a true would hide from the booleans check.
    body = json.dumps({"instances": [[True] + [0.0] * 783]})
    for encoding in ("utf-16", "utf-32"):
        for route in (PREDICT, INFER):
            r = httpx.post(url + route, content=body.encode(encoding), headers=JSON)
            assert r.status_code == 400
            assert "not UTF-8 text" in r.text
    # N and the seed: JSON integers only, in v1 as in V2.
    x = json.dumps(images(1))
    v2 = '{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": %s}]'
    for text in ('"100"', "1e3", "100.0", "true"):
        v1 = f'{{"instances": {x}, "samples": {text}}}'
        r = httpx.post(url + UNCERTAINTY, content=v1, headers=JSON)
        assert r.status_code == 422, text
        r = httpx.post(url + INFER, content=v2 % x + f', "parameters": {{"mc_samples": {text}}}}}')
        assert r.status_code == 400, text
        assert "must be an integer" in r.text
    # A 32 KB PNG of 1 x 16,777,216 pixels: refused from its header, nothing decoded.
    wide = png(16_777_216, 1)
    assert len(wide) < 40_000
    r = httpx.post(url + IMAGE, files={"file": ("wide.png", wide)}, timeout=5)
    assert r.status_code == 413
    assert "a side over the limit of 4096" in r.text


def test_images_decode_off_the_event_loop(url: str) -> None:
    # Four uploads of the largest allowed image at once: health checks are answered meanwhile.
    # 4096 x 4096 pixels (the pixel and side limits) of a shaded square in a 100 KB PNG.
    side = 4096
    ramp = np.arange(side) * 200 // side
    square = np.add.outer(ramp, ramp).astype(np.uint8) // 2
    out = io.BytesIO()
    Image.fromarray(square).save(out, "PNG", compress_level=9)
    assert len(out.getvalue()) < MAX_BODY - 1000

    def upload() -> int:
        files = {"file": ("big.png", out.getvalue())}
        return httpx.post(url + IMAGE, files=files, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        uploads = [pool.submit(upload) for _ in range(4)]
        live = [httpx.get(url + "/health/live", timeout=1).status_code for _ in range(10)]
        statuses = [u.result() for u in uploads]
    assert live == [200] * 10
    assert statuses == [200] * 4


def test_browser_facing_headers_and_docs_without_a_cdn(url: str) -> None:
    for path in ("/", "/static/app.js", "/static/style.css"):
        headers = httpx.get(url + path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
    for page in ("/docs", "/redoc"):
        html = httpx.get(url + page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets
        assert not [a for a in assets if "://" in a], assets
        for asset in assets:
            r = httpx.get(url + asset)
            assert r.status_code == 200, asset
            assert len(r.content) > 1000


# ----------------------------------------------------------------------------- signals


def full_size_model(folder: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(folder / "big.safetensors", build_model(MLPConfig()), LABELS, {})
    return folder


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_drains_like_one_to_the_server(
    sig: signal.Signals, tmp_path: Path
) -> None:
    settings = {
        "MAX_TOTAL_SAMPLES": "64000",
        "SHUTDOWN_DELAY_SECONDS": "1",
        "SHUTDOWN_GRACE_SECONDS": "60",
        "LOG_LEVEL": "info",
    }
    log = tmp_path / "server.log"
    url, proc = start_server(full_size_model(tmp_path), settings, log)
    try:
        wait_until_ready(url)
        body = {"instances": images(64), "samples": 1000, "seed": 0}
        route = url + "/v1/models/big/uncertainty"

        async def run() -> tuple[list[int], list[int]]:
            async with httpx.AsyncClient(timeout=120) as client:
                pending = [asyncio.ensure_future(client.post(route, json=body)) for _ in range(16)]
                await asyncio.sleep(0.5)  # in flight: ~0.1 s of CPU each, on 2 cores
                # What Ctrl-C in a terminal and systemd's stop do: the server, its inference
                # process and any other process of the group get the signal.
                os.killpg(proc.pid, sig)
                await asyncio.sleep(0.1)
                ready = [(await client.get(url + "/health/ready")).status_code for _ in range(3)]
                return [r.status_code for r in await asyncio.gather(*pending)], ready

        statuses, readiness = asyncio.run(run())
        assert statuses == [200] * 16
        assert readiness == [503] * 3  # answered, not refused, while the listener stays open
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text
    assert "exited unexpectedly" not in text  # the inference process ignored the signal
