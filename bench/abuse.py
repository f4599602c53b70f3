"""Hostile clients at scale (issue 17), against a real `python -m service` on 127.0.0.1: for
each attack, the load the other clients held (wrk, eval requests) beside a run without attack,
the server's peak resident memory, and what the attackers got.

Run: .venv/bin/python bench/abuse.py --checkpoint checkpoints/fashion-mlp.safetensors \
        [--attackers 300] [--duration 10] [--root DIR] [--env KEY=VALUE] [--json abuse.json]
--root runs the server of another checkout (a git worktree of an earlier commit, say) with this
script's attacks, for a before-and-after table. The server runs with its default settings, but a
log level of warning and the MCDROPOUT_* settings of --env. Attacks (each for --duration
seconds, every attacker starting again once answered or cut off):
- slow bodies: POSTs that declare an 8 MiB body and send one byte a second;
- stalled bodies: the same, one byte and then nothing;
- slow headers: a header line a second, never the end of the headers;
- huge headers: 8 connections sending unfinished headers as fast as they can, 50 MB each;
- idle connections: connections that send nothing;
- gzip flood: 60 at a time, V2 requests of 8.7 KB that inflate to 8 MiB of JSON;
- hang-ups: half a body, then the connection closed;
- wide images: 4 at a time, uploads of a 1 x 16,777,216 PNG;
- large images: 4 at a time, uploads of a 4096 x 4096 PNG.
"""

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from http_bench import MODEL, ROOT, free_port, key_value, model_folder, wait_ready, write_bodies
from loadgen import Row, run_wrk
from peak_rss import polling, tree_mb, v2_gzip
from PIL import Image

Attack = Callable[[str, int, threading.Event, Counter[str]], Awaitable[None]]
MIB = 1024 * 1024


@dataclass(frozen=True)
class Result:
    attack: str
    attackers: int
    req_per_s: float  # the other clients' eval requests
    p99_ms: float
    errors: int
    rss_start_mb: float  # the server and its inference process
    rss_peak_mb: float
    outcome: dict[str, int]  # what the attackers got: status codes, "closed", "reset"


def outcome_of(read: "asyncio.Future[bytes]") -> str:
    """A status code from the response's first line; "closed" if the server closed without one,
    "reset" if the connection was reset."""
    if read.exception() is not None:
        return "reset"
    data = read.result()
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


Step = Callable[[asyncio.StreamWriter], Awaitable[bool]]


async def one_connection(port: int, head: bytes, step: Step, stop: threading.Event) -> str:
    """Sends head, then takes steps (each says whether to go on) until the server answers or
    closes the connection, the attacker is done, or the attack stops."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    read = asyncio.ensure_future(reader.read(256))
    try:
        writer.write(head)
        await writer.drain()
        while not read.done() and not stop.is_set() and await step(writer):
            pass
        await asyncio.wait([read], timeout=0 if stop.is_set() else 5)
        return outcome_of(read) if read.done() else "no answer"
    except (ConnectionError, OSError):
        return "reset"
    finally:
        read.cancel()
        writer.close()


def repeatedly(head: Callable[[], bytes], step: Callable[[], Step]) -> Attack:
    """An attacker that connects again as soon as its connection is answered or cut off."""

    async def run(url: str, port: int, stop: threading.Event, seen: Counter[str]) -> None:
        while not stop.is_set():
            seen[await one_connection(port, head(), step(), stop)] += 1

    return run


def post_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


PREDICT = f"/v1/models/{MODEL}/predict"


def sending(data: Callable[[int], bytes | None], interval: float) -> Callable[[], Step]:
    """Steps that send data(i) every interval seconds; None from data: done."""

    def steps() -> Step:
        count = 0

        async def step(writer: asyncio.StreamWriter) -> bool:
            nonlocal count
            await asyncio.sleep(interval)
            count += 1
            chunk = data(count)
            if chunk is None:
                return False
            writer.write(chunk)
            await writer.drain()
            return True

        return step

    return steps


def hang_up() -> Attack:
    async def run(url: str, port: int, stop: threading.Event, seen: Counter[str]) -> None:
        while not stop.is_set():
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post_head(PREDICT, 20_000) + b'{"instances": [[0.1, 0.2')
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            seen["hung up"] += 1

    return run


def gzip_flood() -> Attack:
    packed = v2_gzip(np.full((1, 784), 0.5), 8 * MIB - 1000).body

    async def run(url: str, port: int, stop: threading.Event, seen: Counter[str]) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while not stop.is_set():
                try:
                    r = await client.post(
                        f"{url}/v2/models/{MODEL}/infer",
                        content=packed,
                        headers={"Content-Encoding": "gzip"},
                    )
                    seen[str(r.status_code)] += 1
                except httpx.HTTPError as e:
                    seen[type(e).__name__] += 1

    return run


def uploads(image: bytes) -> Attack:
    """An attacker that uploads image to the image route again and again."""

    async def run(url: str, port: int, stop: threading.Event, seen: Counter[str]) -> None:
        route = f"{url}/v1/models/{MODEL}/uncertainty/image"
        async with httpx.AsyncClient(timeout=60) as client:
            while not stop.is_set():
                r = await client.post(route, files={"file": ("a.png", image)})
                seen[str(r.status_code)] += 1

    return run


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=9)
    return out.getvalue()


# 1 x 16,777,216 black pixels, and 4096 x 4096 of a shaded square: each at the default pixel
# limit, in a few tens of KB of PNG.
WIDE = png(np.zeros((1, 4096 * 4096), np.uint8))
SQUARE = png((np.add.outer(np.arange(4096), np.arange(4096)) * 100 // 4096).astype(np.uint8))
SLOW_BODY = post_head(PREDICT, 8 * MIB) + b"{"
SLOW_HEAD = b"GET /health/live HTTP/1.1\r\nHost: bench\r\n"
HUGE_HEAD = b"GET /health/live HTTP/1.1\r\nX-Huge: "
ATTACKS: dict[str, tuple[Attack, int | None]] = {  # name: (attacker, how many; None: --attackers)
    "slow bodies": (repeatedly(lambda: SLOW_BODY, sending(lambda i: b" ", 1.0)), None),
    "stalled bodies": (repeatedly(lambda: SLOW_BODY, sending(lambda i: b"", 0.5)), None),
    "slow headers": (
        repeatedly(lambda: SLOW_HEAD, sending(lambda i: f"X-{i}: {i}\r\n".encode(), 1.0)),
        None,
    ),
    "huge headers": (
        repeatedly(lambda: HUGE_HEAD, sending(lambda i: b"a" * 65536 if i < 800 else None, 0)),
        8,
    ),
    "idle connections": (repeatedly(lambda: b"", sending(lambda i: b"", 0.5)), None),
    "gzip flood": (gzip_flood(), 60),
    "hang-ups": (hang_up(), 32),
    "wide images": (uploads(WIDE), 4),
    "large images": (uploads(SQUARE), 4),
}


@contextmanager
def attacking(attack: Attack, count: int, url: str, port: int) -> Iterator[Counter[str]]:
    """count attackers in a thread of their own (their event loop) while the block runs."""
    stop, seen = threading.Event(), Counter[str]()

    async def main() -> None:
        await asyncio.gather(*(attack(url, port, stop, seen) for _ in range(count)))

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # the attackers connect and settle in
        yield seen
    finally:
        stop.set()
        thread.join(timeout=90)


@contextmanager
def server(
    root: Path, folder: Path, log: Path, settings: dict[str, str]
) -> Iterator[tuple[str, int, int]]:
    """(URL, port, PID) of `python -m service` from root's checkout, with extra settings."""
    port = free_port()
    env = os.environ | {
        "PYTHONPATH": str(root),
        "MCDROPOUT_MODEL_PATH": str(folder),
        "MCDROPOUT_PORT": str(port),
        "MCDROPOUT_LOG_LEVEL": "warning",
        **settings,
    }
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "service"]
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/health/ready", log, 120)
        yield url, port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def measure(url: str, bodies: Path, seconds: float) -> Row:
    return run_wrk(url + PREDICT, bodies, 8, seconds, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/fashion-mlp.safetensors")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server runs")
    p.add_argument("--attackers", type=int, default=300)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated names")
    p.add_argument("--env", type=key_value, action="append", default=[], help="KEY=VALUE")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if unknown := [n for n in names if n not in ATTACKS]:
        p.error(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="abuse-") as work:
        folder = model_folder(Path(work), args.checkpoint)
        eval_bodies = write_bodies(Path(work), 100)[0].bodies
        log = Path(work) / "server.log"
        with server(args.root.resolve(), folder, log, dict(args.env)) as (url, port, pid):
            print(f"{platform.machine()}, {os.cpu_count()} cores, server from {args.root}")
            measure(url, eval_bodies, 2)  # warm-up
            start = tree_mb(pid, "VmRSS")
            with polling(pid) as peaks:
                row = measure(url, eval_bodies, args.duration)
            results.append(result("none", 0, row, start, peaks.rss_mb, Counter()))
            for name in names:
                attack, count = ATTACKS[name]
                n = count or args.attackers
                start = tree_mb(pid, "VmRSS")
                with polling(pid) as peaks, attacking(attack, n, url, port) as seen:
                    row = measure(url, eval_bodies, args.duration)
                results.append(result(name, n, row, start, peaks.rss_mb, seen))
                print(markdown(results[-1]), flush=True)
                time.sleep(2)  # what the attack left closes (timeouts) before the next one
    print("| attack | attackers | others' eval req/s | p99 ms | errors | RSS MB start | peak | "
          "attackers got |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(markdown(r))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def result(
    attack: str, count: int, row: Row, start_mb: float, peak_mb: float, seen: Counter[str]
) -> Result:
    return Result(
        attack, count, row.req_per_s, row.p99_ms, row.errors, start_mb, peak_mb, dict(seen)
    )


def markdown(r: Result) -> str:
    got = ", ".join(f"{k}: {v}" for k, v in sorted(r.outcome.items(), key=lambda kv: -kv[1]))
    return (
        f"| {r.attack} | {r.attackers} | {r.req_per_s:.1f} | {r.p99_ms:.1f} | {r.errors} | "
        f"{r.rss_start_mb:.0f} | {r.rss_peak_mb:.0f} | {got} |"
    )


if __name__ == "__main__":
    main()
