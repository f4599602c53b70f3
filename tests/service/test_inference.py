"""The inference process (service/inference/process.py): the default way a server runs its
engines."""

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from fastapi.testclient import TestClient

from models.checkpoint import load_checkpoint
from models.engine import Engine, MCRequest, engine_for
from service.inference.jobs import InferenceError, Job, MCAnswer, Pending
from service.inference.process import InferenceProcess, default_torch_threads
from service.settings import Settings
from tests.helpers import make_client, wait_ready

PIXELS = torch.rand(3, 784, generator=torch.Generator().manual_seed(5))


def children() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "mcdropout-inference"]


@pytest.fixture(scope="module")
def process_client(model_dir: Path) -> Iterator[TestClient]:
    with make_client(Settings(model_path=model_dir, inference="process")) as c:
        wait_ready(c)
        yield c


def test_the_engines_run_in_a_child_that_stops_with_the_server(model_dir: Path) -> None:
    with make_client(Settings(model_path=model_dir)) as c:  # the default
        wait_ready(c)
        (child,) = children()
        assert child.pid != os.getpid()
        assert child.is_alive()
        assert c.post("/v1/models/tiny/predict", json={"instances": [[0.5] * 784]}).is_success
    child.join(10)
    assert child.exitcode == 0
    assert children() == []


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("predict", {"instances": PIXELS.tolist()}),
        ("uncertainty", {"instances": PIXELS.tolist(), "samples": 40, "seed": 11}),
    ],
)
def test_a_process_answers_as_a_thread_does(
    process_client: TestClient, settings: Settings, route: str, body: dict[str, Any]
) -> None:
    assert settings.inference == "thread"
    with make_client(settings) as thread_client:
        wait_ready(thread_client)
        expected = thread_client.post(f"/v1/models/tiny/{route}", json=body)
    answer = process_client.post(f"/v1/models/tiny/{route}", json=body)
    assert answer.status_code == expected.status_code == 200
    assert answer.json()["predictions"] == expected.json()["predictions"]


def test_a_killed_child_is_replaced_and_its_requests_get_503(process_client: TestClient) -> None:
    (child,) = children()
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    body = {"instances": [[0.25] * 784], "samples": 10, "seed": 1}
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    while not statuses or statuses[-1] != 200:
        assert time.monotonic() < deadline, statuses
        r = process_client.post("/v1/models/tiny/uncertainty", json=body)
        statuses.append(r.status_code)
        if r.status_code != 200:  # the request the dead child held, if it got one
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "the inference process exited" in r.json()["detail"]
    assert statuses.count(503) <= 1
    (new,) = children()
    assert new.pid != child.pid
    assert new.is_alive()


class Unpickled:
    """Unpickles as f(*args) in the child: a crash or a hang in the middle of a batch."""

    def __init__(self, f: Callable[..., Any], *args: Any) -> None:
        self.f, self.args = f, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.f, self.args


class Pixels:
    """Stands in for a job's pixels: the server sends what numpy() returns to the child."""

    def __init__(self, sent: Unpickled) -> None:
        self.sent = sent

    def numpy(self) -> Unpickled:
        return self.sent


def tiny_engine(model_dir: Path) -> Engine:
    return engine_for(load_checkpoint(model_dir / "tiny.safetensors"))


async def run(process: InferenceProcess, jobs: list[Job]) -> list[Any]:
    """Each job's result, or its exception."""
    batch = [Pending(job) for job in jobs]
    await process.run(batch)
    return [p.future.exception() or p.future.result() for p in batch]


def test_results_errors_and_a_crash_mid_batch(model_dir: Path) -> None:
    engine = tiny_engine(model_dir)
    X = PIXELS[:2]

    async def scenario() -> None:
        process = InferenceProcess(Settings(model_path=model_dir))
        await process.start()
        try:
            probs, answer, error = await run(
                process, [Job(engine, X, None, None), Job(engine, X, 30, 4), Job(engine, X, 0, 1)]
            )
            assert torch.equal(probs, engine.predict(X))
            (stats,) = engine.uncertainty([MCRequest(X, 30, 4)])
            assert answer == MCAnswer.of(stats)
            assert isinstance(error, ValueError)
            assert str(error) == "samples must be at least 1, got 0"

            first = process.process
            (crashed,) = await run(
                process, [Job(engine, cast(torch.Tensor, Pixels(Unpickled(os._exit, 3))), 5, 1)]
            )
            assert isinstance(crashed, InferenceError)
            assert first is not None
            first.join(10)
            assert first.exitcode == 3

            (again,) = await run(process, [Job(engine, X, None, None)])  # a new child
            assert process.process is not first
            assert torch.equal(again, engine.predict(X))
        finally:
            await process.stop()
        assert process.process is not None
        assert process.process.exitcode == 0

    asyncio.run(scenario())


def test_a_wedged_child_is_killed_once_its_batch_is_abandoned(model_dir: Path) -> None:
    engine = tiny_engine(model_dir)

    async def scenario() -> None:
        process = InferenceProcess(Settings(model_path=model_dir, request_timeout_seconds=0.5))
        await process.start()
        try:
            wedged = process.process
            pending = Pending(
                Job(engine, cast(torch.Tensor, Pixels(Unpickled(time.sleep, 60.0))), None, None)
            )
            asyncio.get_running_loop().call_later(
                0.2, pending.future.cancel
            )  # its request's timeout
            await process.run([pending])
            assert wedged is not None
            wedged.join(10)
            assert wedged.exitcode == -signal.SIGKILL  # killed in its sleep, not after it
            (probs,) = await run(process, [Job(engine, PIXELS[:1], None, None)])
            assert torch.equal(probs, engine.predict(PIXELS[:1]))
        finally:
            await process.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 2), (5, 4), (16, 4), (64, 4)])
def test_the_child_takes_the_cores_less_one_at_most_four_threads(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_torch_threads() == threads
