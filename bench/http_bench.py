"""HTTP benchmark: the same checkpoint and the same request bodies served by `python -m service`
(ours), by the tutorial FastAPI app (bench/naive_server.py) and by LitServe with its batching on
(bench/litserve_server.py), each started here on 127.0.0.1 and driven by wrk (hey if wrk is
missing) at each concurrency for a fixed time.

Run: .venv/bin/python bench/http_bench.py --checkpoint checkpoints/fashion-mlp.safetensors \
        [--servers ours,stock,naive,litserve] [--concurrency 1,8,32,128] [--duration 10] [--quick] \
        [--env MCDROPOUT_WORKERS=2] [--json results.json]
Each request carries one image (784 pixels in [0, 1] with 4 decimals, from a fixed seed; wrk
cycles through 16 of them, hey sends the first); eval is the predict route, uncertainty asks for
N = --samples passes. Errors count HTTP statuses >= 400, socket errors and timeouts. Server CPU
is the user and system time of the server's processes during the row, per request. --env goes to
`ours` (and `stock`: ours under uvicorn's own protocol, bench/stock_server.py) only, to compare
their configurations. The client shares the machine with the server.
Exits 1 if a server or an endpoint could not be measured (the reason is printed).
"""

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from functools import partial
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
from loadgen import Row, pick_tool, process_tree, run_hey, run_wrk, tool_version

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("ours", "naive", "litserve")  # the default; also "stock" (bench/stock_server.py)
MODEL = "bench"  # the name every server serves the checkpoint under
IMAGES = 16


@dataclass(frozen=True)
class Config:
    checkpoint: Path
    servers: tuple[str, ...]
    concurrency: tuple[int, ...]
    duration: float  # seconds per row
    warmup: float  # seconds per endpoint, not measured
    samples: int
    env: dict[str, str]  # extra settings for `ours`
    tool: str  # wrk or hey
    threads: int  # wrk threads
    start_timeout: float
    json: Path | None


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    url: str


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    bodies: Path  # one JSON body per line


# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ours(folder: Path, env: dict[str, str], stock: bool = False) -> Server:
    """`python -m service` serving folder's checkpoints, with env's extra settings; stock: the
    same app under uvicorn's own protocol (bench/stock_server.py)."""
    port = free_port()
    settings = {
        "MCDROPOUT_MODEL_PATH": str(folder),
        "MCDROPOUT_PORT": str(port),
        "MCDROPOUT_LOG_LEVEL": "warning",
        **env,
    }
    extra = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
    name = "stock" if stock else "ours"
    label = f"{name} ({extra})" if extra else name
    if stock:
        argv = [sys.executable, str(ROOT / "bench/stock_server.py")]
    else:
        argv = [sys.executable, "-m", "service"]
    return Server(name, label, argv, settings, "/health/ready", f"http://127.0.0.1:{port}")


def server_spec(name: str, checkpoint: Path, folder: Path, env: dict[str, str]) -> Server:
    if name in ("ours", "stock"):
        return ours(folder, env, stock=name == "stock")
    port = free_port()
    script = ROOT / "bench" / f"{name}_server.py"
    argv = [sys.executable, str(script), "--checkpoint", str(checkpoint), "--port", str(port)]
    return Server(name, name, argv, {}, "/health", f"http://127.0.0.1:{port}")


@contextmanager
def running(server: Server, log: Path, timeout: float) -> Iterator[int]:
    """The server's PID once it answers 200 on its ready path; the whole process group is
    stopped afterwards."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": pythonpath} | server.env
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(proc, server.url + server.ready_path, log, timeout)
        yield proc.pid
    finally:
        stop(proc)


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float, settle: int = 20
) -> None:
    """Until `settle` answers in a row are 200, each on a new connection: with several
    workers, each answers for itself, and one may be ready while another is still loading."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}: {tail(log)}")
        try:
            streak = streak + 1 if httpx.get(url, timeout=5).status_code == 200 else 0
        except httpx.TransportError:
            streak = 0
        if streak >= settle:
            return
        time.sleep(0.02 if streak else 0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s: {tail(log)}")


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM to the whole group (LitServe leaves its workers running when only the parent gets
    it), then SIGKILL to whatever is left after the grace period."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the parent, or it stays in the group as a zombie
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"


# Requests


def write_bodies(folder: Path, samples: int) -> list[Endpoint]:
    rng = np.random.default_rng(0)
    images = rng.random((IMAGES, 784)).round(4).tolist()
    routes: list[tuple[str, str, dict[str, int]]] = [
        ("eval", "predict", {}),
        (f"uncertainty N={samples}", "uncertainty", {"samples": samples}),
    ]
    endpoints = []
    for name, route, extra in routes:
        path = folder / f"{route}.jsonl"
        path.write_text("".join(json.dumps({"instances": [x], **extra}) + "\n" for x in images))
        endpoints.append(Endpoint(name, f"/v1/models/{MODEL}/{route}", path))
    return endpoints


def check_endpoint(url: str, endpoint: Endpoint) -> None:
    """One request, outside the measurement: a server that answers wrongly is not measured."""
    body = endpoint.bodies.read_text().splitlines()[0]
    headers = {"Content-Type": "application/json"}
    r = httpx.post(url + endpoint.path, content=body, headers=headers, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"{endpoint.path} answered {r.status_code}: {r.text[:200]}")
    if len(r.json().get("predictions", [])) != 1:
        raise RuntimeError(f"{endpoint.path} answered without one prediction: {r.text[:200]}")


def load(config: Config, url: str, endpoint: Endpoint, concurrency: int, seconds: float) -> Row:
    if config.tool == "wrk":
        return run_wrk(url + endpoint.path, endpoint.bodies, concurrency, seconds, config.threads)
    return run_hey(url + endpoint.path, endpoint.bodies, concurrency, seconds)


# The run


def bench_server(
    server: Server, endpoints: list[Endpoint], config: Config, log: Path
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    failures: list[str] = []
    with running(server, log, config.start_timeout) as pid:
        for endpoint in endpoints:
            try:
                rows += bench_endpoint(server, pid, endpoint, config)
            except (RuntimeError, httpx.HTTPError) as e:
                failures.append(f"{server.label} {endpoint.name}: {e}")
                print(f"  not measured: {failures[-1]}", file=sys.stderr)
    return rows, failures


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the server's process tree (its workers, its inference
    process)."""
    ticks = 0
    for p in process_tree(pid):
        with suppress(OSError):  # the process ended
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def with_server_cpu(pid: int, measure: Callable[[], Row]) -> Row:
    """The row measure() gives, with the server's CPU time per request while it ran."""
    before = cpu_seconds(pid)
    row = measure()
    return replace(row, server_cpu_us=(cpu_seconds(pid) - before) / max(1, row.requests) * 1e6)


def bench_endpoint(server: Server, pid: int, endpoint: Endpoint, config: Config) -> list[Row]:
    rows = []
    check_endpoint(server.url, endpoint)
    if config.warmup > 0:
        load(config, server.url, endpoint, min(8, max(config.concurrency)), config.warmup)
        check_endpoint(server.url, endpoint)
    for concurrency in config.concurrency:
        measure = partial(load, config, server.url, endpoint, concurrency, config.duration)
        row = with_server_cpu(pid, measure)
        rows.append(replace(row, server=server.label, endpoint=endpoint.name))
        print(f"  {markdown_row(rows[-1])}", file=sys.stderr)
        # Requests the load generator abandoned at its deadline may still be running: one more
        # request, answered, means the server has drained them (and still answers correctly).
        check_endpoint(server.url, endpoint)
    return rows


def markdown_row(r: Row) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in r.error_kinds.items())
    errors = f"{r.errors} ({kinds})" if kinds else str(r.errors)
    return (
        f"| {r.server} | {r.endpoint} | {r.concurrency} | {r.req_per_s:.1f} | {r.p50_ms:.2f} | "
        f"{r.p99_ms:.2f} | {errors} | {r.server_cpu_us:.0f} |"
    )


def table(rows: list[Row]) -> str:
    head = (
        "| server | endpoint | concurrency | req/s | p50 ms | p99 ms | errors | server CPU us/req |"
    )
    return "\n".join([head, "|---|---|---|---|---|---|---|---|", *map(markdown_row, rows)])


def machine() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {
        "arch": platform.machine(),
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": version("torch"),
        "litserve": version("litserve"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe(info: dict[str, object], config: Config, tool: str) -> str:
    threads = f", {config.threads} thread(s)" if config.tool == "wrk" else ""
    return (
        f"{info['arch']} {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"Python {info['python']}, torch {info['torch']}, LitServe {info['litserve']}; "
        f"load average at start {info['loadavg_at_start']}; load generator {tool}{threads}, "
        f"{config.duration:g} s per row after {config.warmup:g} s of warm-up per endpoint; "
        f"client and servers on the same machine"
    )


def model_folder(work: Path, checkpoint: Path) -> Path:
    """A folder in which `ours` serves checkpoint under the name MODEL."""
    folder = work / "models"
    folder.mkdir()
    (folder / f"{MODEL}.safetensors").symlink_to(checkpoint.resolve())
    return folder


def run(config: Config, work: Path) -> int:
    folder = model_folder(work, config.checkpoint)
    endpoints = write_bodies(work, config.samples)
    info = machine() | {"load_generator": tool_version(config.tool)}
    print(describe(info, config, str(info["load_generator"])))
    rows: list[Row] = []
    failures: list[str] = []
    for name in config.servers:
        server = server_spec(name, config.checkpoint, folder, config.env)
        print(f"{server.label}: starting", file=sys.stderr)
        try:
            got, failed = bench_server(server, endpoints, config, work / f"{name}.log")
        except RuntimeError as e:
            got, failed = [], [f"{server.label}: could not start: {e}"]
            print(f"  not measured: {failed[0]}", file=sys.stderr)
        rows += got
        failures += failed
    print(table(rows))
    for failure in failures:
        print(f"- not measured: {failure}")
    if config.json is not None:
        result = {
            "machine": info,
            "config": config_json(config),
            "rows": rows,
            "failures": failures,
        }
        config.json.write_text(json.dumps(result, indent=2, default=asdict) + "\n")
    return 1 if failures else 0


def config_json(config: Config) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


# Command line


def seconds(text: str) -> float:
    return float(text.removesuffix("s"))


def int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(x) for x in text.split(",") if x.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give positive integers separated by commas, e.g. 1,8,32")
    return values


def server_list(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    known = (*SERVERS, "stock")
    unknown = sorted(set(names) - set(known))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}; got {text!r}")
    return names


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/fashion-mlp.safetensors")
    p.add_argument("--servers", type=server_list, default=SERVERS)
    p.add_argument("--concurrency", type=int_list, default=(1, 8, 32, 128))
    p.add_argument("--duration", type=seconds, help="seconds per row (default 10, --quick 2)")
    p.add_argument("--warmup", type=seconds, help="seconds per endpoint (default 2, --quick 0)")
    p.add_argument("--quick", action="store_true", help="short rows and no warm-up")
    p.add_argument("--samples", type=int, default=100, help="N of the uncertainty requests")
    p.add_argument("--env", type=key_value, action="append", default=[], help="KEY=VALUE (ours)")
    p.add_argument("--load-generator", choices=("auto", "wrk", "hey"), default="auto")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--start-timeout", type=seconds, default=120)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        p.error(f"no checkpoint at {args.checkpoint} (train one: python -m training train)")
    tool = pick_tool(args.load_generator)
    if tool is None:
        p.error("neither wrk nor hey is on PATH (Debian: apt-get install wrk hey)")
    quick = args.quick
    return Config(
        checkpoint=args.checkpoint,
        servers=args.servers,
        concurrency=args.concurrency,
        duration=args.duration if args.duration is not None else (2.0 if quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (0.0 if quick else 2.0),
        samples=args.samples,
        env=dict(args.env),
        tool=tool,
        threads=args.threads,
        start_timeout=args.start_timeout,
        json=args.json,
    )


def main() -> None:
    config = parse_args()
    with tempfile.TemporaryDirectory(prefix="http-bench-") as work:
        sys.exit(run(config, Path(work)))


if __name__ == "__main__":
    main()
