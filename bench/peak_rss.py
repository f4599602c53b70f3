"""Peak memory of `python -m service` at the limits of its settings (issue 4, item 6d), plain
JSON bodies and gzipped ones that inflate to the body limit, alone and mixed (issue 17).

Each case runs in a fresh server on 127.0.0.1: its requests are sent (all at once when
concurrent), then the server's peak resident memory is read: VmHWM from /proc, summed over the
server's processes (exact for one process, an upper bound for several), and the largest sums of
VmRSS and of PSS polled every 10 ms (PSS counts the pages that workers share only once). The
limits are those of service/settings.py with --env applied. "body KB" is the largest body as
sent (gzipped: compressed).
Run: .venv/bin/python bench/peak_rss.py --checkpoint checkpoints/fashion-mlp.safetensors \
        [--concurrency 32] [--env MCDROPOUT_WORKERS=2] [--json peak.json]
Exits 1 if a request fails or a peak RSS goes over --target-mb (1024 by default).
"""

import argparse
import gzip
import json
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from http_bench import MODEL, ROOT, key_value, machine, model_folder, ours, running
from loadgen import process_tree

from service.settings import Settings


@dataclass(frozen=True)
class Post:
    route: str  # after the server's URL
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Case:
    name: str
    posts: tuple[Post, ...]  # request i sends posts[i % len(posts)]
    requests: int  # all sent at once


def v1(route: str, body: bytes) -> Post:
    return Post(f"/v1/models/{MODEL}/{route}", body, {"Content-Type": "application/json"})


def v2_gzip(images: np.ndarray, inflated: int) -> Post:
    """A V2 eval request of images at full precision, padded with spaces to `inflated` bytes
    of JSON, gzipped: a few KB that the server inflates."""
    tensor = {"name": "images", "datatype": "FP32", "shape": list(images.shape)}
    text = json.dumps({"inputs": [tensor | {"data": images.ravel().tolist()}]}).encode()
    packed = gzip.compress(text.ljust(inflated))
    return Post(f"/v2/models/{MODEL}/infer", packed, {"Content-Encoding": "gzip"})


@dataclass(frozen=True)
class Result:
    case: str
    body_kb: float
    requests: int
    errors: dict[str, int]  # status code or exception name: count
    ready_mb: float  # RSS once ready, before the case's requests
    hwm_mb: float  # VmHWM summed over the server's processes
    polled_rss_mb: float  # largest sum of VmRSS seen while polling
    polled_pss_mb: float  # largest sum of PSS seen while polling


def limits(env: dict[str, str]) -> Settings:
    """The server's settings: its defaults, the MCDROPOUT_* environment, then --env."""
    overrides: dict[str, Any] = {k.removeprefix("MCDROPOUT_").lower(): v for k, v in env.items()}
    return Settings(**overrides)


def body(images: np.ndarray, samples: int | None = None, *, pad_to: int | None = None) -> bytes:
    """JSON pixels with 4 decimals, or at full float precision padded with trailing spaces (still
    valid JSON) to pad_to bytes."""
    pixels = images.round(4) if pad_to is None else images
    payload: dict[str, object] = {"instances": pixels.tolist()}
    if samples is not None:
        payload["samples"] = samples
    data = json.dumps(payload).encode()
    return data if pad_to is None else data.ljust(pad_to)


def cases(s: Settings, concurrency: int) -> list[Case]:
    rng = np.random.default_rng(0)
    most = rng.random((s.max_instances, 784))
    mc_instances = max(1, min(s.max_instances, s.max_total_samples // s.max_samples))
    mc_samples = min(s.max_samples, s.max_total_samples // s.max_instances)
    full = s.max_body_bytes
    eval_post, full_post = v1("predict", body(most)), v1("predict", body(most, pad_to=full))
    mc_post = v1("uncertainty", body(most[:mc_instances], s.max_samples))
    wide_post = v1("uncertainty", body(most, mc_samples))
    gzipped = v2_gzip(most, full)
    c, flood = concurrency, 2 * concurrency
    return [
        Case("idle, after one eval request", (v1("predict", body(most[:1])),), 1),
        Case(f"eval, {s.max_instances} instances", (eval_post,), 1),
        Case(f"eval, {s.max_instances} instances, {c} concurrent", (eval_post,), c),
        Case(
            f"eval, {s.max_instances} instances, full precision, body of max_body_bytes, "
            f"{c} concurrent",
            (full_post,),
            c,
        ),
        Case(
            f"V2 eval, {s.max_instances} instances, full precision, gzipped, max_body_bytes "
            f"once inflated, {flood} concurrent",
            (gzipped,),
            flood,
        ),
        Case(
            f"half the V2 gzipped above, half v1 plain of max_body_bytes, {flood} concurrent",
            (gzipped, full_post),
            flood,
        ),
        Case(f"MC, {mc_instances} x {s.max_samples}", (mc_post,), 1),
        Case(f"MC, {mc_instances} x {s.max_samples}, {c} concurrent", (mc_post,), c),
        Case(f"MC, {s.max_instances} x {mc_samples}, {c} concurrent", (wide_post,), c),
    ]


def field_kb(path: str, field: str) -> int:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return 0  # the process ended
    line = next((x for x in lines if x.startswith(f"{field}:")), None)
    return int(line.split()[1]) if line else 0


def tree_mb(pid: int, field: str) -> float:
    """A /proc/PID/status field (VmRSS, VmHWM) summed over the process tree, in MB."""
    return sum(field_kb(f"/proc/{p}/status", field) for p in process_tree(pid)) / 1024


def tree_pss_mb(pid: int) -> float:
    """Proportional set size summed over the tree: shared pages (torch's libraries, in every
    worker) counted once in all, where summed RSS counts them once per process."""
    return sum(field_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in process_tree(pid)) / 1024


@dataclass
class Peaks:
    rss_mb: float = 0.0
    pss_mb: float = 0.0

    def sample(self, pid: int) -> None:
        self.rss_mb = max(self.rss_mb, tree_mb(pid, "VmRSS"))
        self.pss_mb = max(self.pss_mb, tree_pss_mb(pid))


@contextmanager
def polling(pid: int, period: float = 0.01) -> Iterator[Peaks]:
    """The largest sums of RSS and PSS over the process tree, sampled every period seconds."""
    peaks = Peaks()
    peaks.sample(pid)
    done = threading.Event()

    def poll() -> None:
        while not done.wait(period):
            peaks.sample(pid)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()
        peaks.sample(pid)


def send(url: str, case: Case) -> dict[str, int]:
    """Every request of the case at once; how many answered what other than 200."""
    pool_limits = httpx.Limits(max_connections=case.requests)
    with (
        httpx.Client(timeout=600, limits=pool_limits) as client,
        ThreadPoolExecutor(case.requests) as pool,
    ):

        def one(i: int) -> str:
            post = case.posts[i % len(case.posts)]
            try:
                r = client.post(url + post.route, content=post.body, headers=post.headers)
                return str(r.status_code)
            except httpx.HTTPError as e:
                return type(e).__name__

        answers = Counter(pool.map(one, range(case.requests)))
    return {answer: n for answer, n in sorted(answers.items()) if answer != "200"}


def measure(case: Case, folder: Path, env: dict[str, str], log: Path) -> Result:
    server = ours(folder, env)
    with running(server, log, timeout=120) as pid:
        ready = tree_mb(pid, "VmRSS")
        with polling(pid) as peaks:
            errors = send(server.url, case)
        hwm = tree_mb(pid, "VmHWM")
    size = max(len(post.body) for post in case.posts) / 1024
    return Result(case.name, size, case.requests, errors, ready, hwm, peaks.rss_mb, peaks.pss_mb)


def errors(r: Result) -> str:
    total = sum(r.errors.values())
    detail = ", ".join(f"{answer}: {n}" for answer, n in r.errors.items())
    return f"{total} ({detail})" if total else "0"


def table(results: list[Result]) -> str:
    lines = [
        "| case | body KB | requests | errors | RSS at ready MB | peak RSS MB (VmHWM) | "
        "peak RSS MB (polled) | peak PSS MB (polled) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.body_kb:.0f} | {r.requests} | {errors(r)} | {r.ready_mb:.0f} | "
            f"{r.hwm_mb:.0f} | {r.polled_rss_mb:.0f} | {r.polled_pss_mb:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/fashion-mlp.safetensors")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--env", type=key_value, action="append", default=[], help="KEY=VALUE")
    p.add_argument("--only", default="", help="run only the cases whose name contains this")
    p.add_argument("--target-mb", type=float, default=1024)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    env = dict(args.env)
    settings = limits(env)
    info = machine()
    print(
        f"{info['arch']} {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"torch {info['torch']}; server settings: max_instances {settings.max_instances}, "
        f"max_samples {settings.max_samples}, max_total_samples {settings.max_total_samples}, "
        f"max_body_bytes {settings.max_body_bytes}, max_body_bytes_in_flight "
        f"{settings.max_body_bytes_in_flight}, workers {settings.workers}, inference "
        f"{settings.inference}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="peak-rss-") as work:
        folder = model_folder(Path(work), args.checkpoint)
        for case in cases(settings, args.concurrency):
            if args.only not in case.name:
                continue
            results.append(measure(case, folder, env, Path(work) / "server.log"))
            print(f"  {table(results[-1:]).splitlines()[-1]}", file=sys.stderr)
    print(table(results))
    worst = max(max(r.hwm_mb, r.polled_rss_mb) for r in results)
    pss = max(r.polled_pss_mb for r in results)
    print(
        f"largest peak RSS: {worst:.0f} MB (target {args.target_mb:.0f} MB); "
        f"largest PSS seen: {pss:.0f} MB"
    )
    if args.json is not None:
        result = {"machine": info, "env": env, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if worst > args.target_mb or any(r.errors for r in results) else 0)


if __name__ == "__main__":
    main()
