"""The load generators of bench/http_bench.py: wrk (with bench/post.lua, which cycles through the
request bodies and prints its results as one JSON line) and hey, each run for a fixed time at one
concurrency, their output read into a Row."""

import json
import re
import shutil
import subprocess
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class Row:
    server: str
    endpoint: str
    concurrency: int
    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    server_cpu_us: float = 0.0  # the server's CPU time per request, all its processes


class LoadError(RuntimeError):
    """The load generator gave no result; the message says why."""


def run_tool(argv: list[str], seconds: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        raise LoadError(f"{argv[0]} did not finish") from None
    if done.returncode != 0:
        raise LoadError(f"{argv[0]} exited with {done.returncode}: {done.stderr[-300:]}")
    return done.stdout


def run_wrk(url: str, bodies: Path, concurrency: int, seconds: float, threads: int) -> Row:
    argv = [
        "wrk", f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{seconds:g}s",
        "--timeout", "60s", "-s", str(LUA), url, "--", str(bodies),
    ]  # fmt: skip
    out = run_tool(argv, seconds)
    line = next((x for x in reversed(out.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise LoadError(f"wrk printed no result: {out[-300:]}")
    r = json.loads(line)
    kinds = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    return Row(
        server="", endpoint="", concurrency=concurrency, requests=r["requests"],
        req_per_s=r["requests"] / (r["duration_us"] / 1e6), p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3, errors=sum(kinds.values()), error_kinds=kinds,
    )  # fmt: skip


def run_hey(url: str, bodies: Path, concurrency: int, seconds: float) -> Row:
    first = bodies.with_suffix(".first.json")
    first.write_text(bodies.read_text().splitlines()[0])
    argv = [
        "hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-t", "60", "-m", "POST",
        "-T", "application/json", "-D", str(first), url,
    ]  # fmt: skip
    out = run_tool(argv, seconds)
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    failed = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors, re.MULTILINE))
    bad = sum(n for code, n in statuses.items() if code >= 400)
    kinds = {k: v for k, v in (("status", bad), ("socket", failed)) if v}
    return Row(
        server="", endpoint="", concurrency=concurrency, requests=sum(statuses.values()) + failed,
        req_per_s=hey_number(out, r"Requests/sec:\s+([\d.]+)"),
        p50_ms=hey_number(out, r"50%+ in ([\d.]+) secs") * 1e3,
        p99_ms=hey_number(out, r"99%+ in ([\d.]+) secs") * 1e3,
        errors=bad + failed, error_kinds=kinds,
    )  # fmt: skip


def hey_number(out: str, pattern: str) -> float:
    m = re.search(pattern, out)
    if m is None:
        raise LoadError(f"hey printed nothing like {pattern!r}: {out[-300:]}")
    return float(m.group(1))


def tool_version(tool: str) -> str:
    flag = "-v" if tool == "wrk" else "-h"
    out = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
    first = (out.stdout + out.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if tool == "wrk" and first else tool


def pick_tool(choice: str) -> str | None:
    candidates = ("wrk", "hey") if choice == "auto" else (choice,)
    return next((t for t in candidates if shutil.which(t)), None)


def process_tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            with suppress(OSError):  # the task ended
                pids += [int(p) for p in task.read_text().split()]
        i += 1
    return pids
