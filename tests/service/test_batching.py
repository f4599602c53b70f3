"""Request batching, the bounded queue, the request timeout (service/inference/batcher.py) and
the body budget (service/edge/body.py).

A gate holds the inference thread on its first batch, so that the requests sent meanwhile queue
up; what happens next (merged batches, a full queue, timeouts) is then deterministic."""

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from models.engine import Engine, MCRequest
from models.mlp import MLPConfig, build_model
from models.stats import UncertaintyStats
from service.inference.jobs import Job, Resolve, execute
from service.inference.thread import InferenceThread
from service.settings import Settings
from tests.helpers import make_client, wait_ready

PIXELS = torch.rand(6, 784, generator=torch.Generator().manual_seed(3)).tolist()


class Gate:
    """Stands in for service.inference.jobs.execute in the inference thread: records each batch,
    and holds the first one until opened."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.batches: list[list[Job]] = []

    def __call__(self, jobs: list[Job], resolve: Resolve) -> None:
        self.batches.append(list(jobs))
        if len(self.batches) == 1:
            assert self.opened.wait(30), "the test never opened the gate"
        execute(jobs, resolve)


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.opened.set()


def gated_client(settings: Settings, gate: Gate, **changes: Any) -> TestClient:
    """A client of a server whose inference thread runs the gate."""
    return make_client(settings.model_copy(update=changes), InferenceThread(gate))


def queue_depth(client: TestClient) -> float:
    match = re.search(r"^mcdropout_queue_depth (\S+)$", client.get("/metrics").text, re.M)
    assert match is not None
    return float(match.group(1))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def predict_body(i: int) -> dict[str, Any]:
    return {"instances": [PIXELS[i]]}


def mc_body(i: int) -> dict[str, Any]:
    return {"instances": PIXELS[i : i + 2], "samples": 30 + i, "seed": 100 + i}


def send(
    pool: ThreadPoolExecutor, client: TestClient, route: str, body: dict[str, Any]
) -> Future[httpx.Response]:
    return pool.submit(client.post, f"/v1/models/tiny/{route}", json=body)


def hold_worker(pool: ThreadPoolExecutor, client: TestClient, gate: Gate) -> Future[httpx.Response]:
    """A first request that occupies the inference thread until the gate opens."""
    first = send(pool, client, "predict", predict_body(5))
    wait_until(lambda: len(gate.batches) == 1)
    return first


def test_concurrent_requests_share_engine_calls_and_keep_their_answers(
    settings: Settings, gate: Gate
) -> None:
    with gated_client(settings, gate) as client, ThreadPoolExecutor(8) as pool:
        wait_ready(client)
        gate.opened.set()
        alone = {
            ("predict", i): client.post("/v1/models/tiny/predict", json=predict_body(i)).json()
            for i in range(3)
        } | {
            ("uncertainty", i): client.post("/v1/models/tiny/uncertainty", json=mc_body(i)).json()
            for i in range(3)
        }
        gate.batches.clear()
        gate.opened.clear()
        first = hold_worker(pool, client, gate)
        pending = {
            key: send(
                pool, client, key[0], (predict_body if key[0] == "predict" else mc_body)(key[1])
            )
            for key in alone
        }
        wait_until(lambda: queue_depth(client) == len(pending))
        gate.opened.set()
        answers = {key: future.result().json() for key, future in pending.items()}
        assert first.result().status_code == 200
    # All six waited together, and went to the engine together.
    assert [len(batch) for batch in gate.batches] == [1, 6]
    for key, answer in answers.items():
        if key[0] == "uncertainty":
            assert answer == alone[key]  # per-request N and seed: the same numbers, exactly
        else:
            (got,), (want,) = answer["predictions"], alone[key]["predictions"]
            assert got["class_index"] == want["class_index"]
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_a_batch_stops_at_the_instance_limit(settings: Settings, gate: Gate) -> None:
    with (
        gated_client(settings, gate, batch_max_instances=4) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        wait_ready(client)
        first = hold_worker(pool, client, gate)
        body = {"instances": PIXELS[:3], "samples": 5, "seed": 1}
        pending = [send(pool, client, "uncertainty", body) for _ in range(3)]
        wait_until(lambda: queue_depth(client) == 3)
        gate.opened.set()
        assert all(f.result().status_code == 200 for f in [first, *pending])
    sizes = [sum(job.instances for job in batch) for batch in gate.batches]
    assert sizes == [1, 3, 3, 3]  # 3 + 3 would exceed 4: each request starts a batch


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing(
    settings: Settings, gate: Gate
) -> None:
    with (
        gated_client(settings, gate, queue_max_requests=2) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        wait_ready(client)
        first = hold_worker(pool, client, gate)
        queued = [send(pool, client, "uncertainty", mc_body(i)) for i in range(2)]
        wait_until(lambda: queue_depth(client) == 2)
        refused = client.post("/v1/models/tiny/uncertainty", json=mc_body(3))
        v2 = client.post(
            "/v2/models/tiny/infer",
            json={
                "inputs": [
                    {"name": "images", "shape": [1, 784], "datatype": "FP32", "data": PIXELS[0]}
                ]
            },
        )
        gate.opened.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
        assert client.post("/v1/models/tiny/uncertainty", json=mc_body(3)).status_code == 200
        metrics = client.get("/metrics").text
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {
        "detail": "overloaded: the queue is full (2 requests waiting); retry later"
    }
    assert v2.status_code == 503
    assert v2.headers["retry-after"] == "1"
    assert v2.json() == {"error": "overloaded: the queue is full (2 requests waiting); retry later"}
    assert 'mcdropout_rejected_requests_total{reason="queue full"} 2.0' in metrics


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(
    settings: Settings, gate: Gate
) -> None:
    with (
        gated_client(settings, gate, request_timeout_seconds=0.3) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        wait_ready(client)
        first = hold_worker(pool, client, gate)
        late = client.post("/v1/models/tiny/uncertainty", json=mc_body(0))
        gate.opened.set()
        held = first.result()  # it waited in the engine past its timeout too
        after = client.post("/v1/models/tiny/uncertainty", json=mc_body(0))
        metrics = client.get("/metrics").text
    assert late.status_code == 504
    assert late.json() == {"detail": "the request took longer than 0.3 s"}
    assert held.status_code == 504
    assert after.status_code == 200
    # The queued job that timed out never reached the engine.
    assert [len(batch) for batch in gate.batches] == [1, 1]
    assert 'mcdropout_rejected_requests_total{reason="timeout"} 2.0' in metrics


def test_batch_metrics_count_requests_and_instances(settings: Settings) -> None:
    with make_client(settings.model_copy(update={"batch_max_delay_ms": 5})) as client:
        wait_ready(client)
        assert (
            client.post("/v1/models/tiny/predict", json={"instances": PIXELS[:3]}).status_code
            == 200
        )
        assert client.post("/v1/models/tiny/uncertainty", json=mc_body(0)).status_code == 200
        metrics = client.get("/metrics").text
    assert 'mcdropout_batch_requests_count{mode="eval"} 1.0' in metrics
    assert 'mcdropout_batch_instances_sum{mode="eval"} 3.0' in metrics
    assert 'mcdropout_batch_instances_sum{mode="mc"} 2.0' in metrics


def test_bodies_beyond_the_in_flight_budget_wait_unread(settings: Settings, gate: Gate) -> None:
    size = len(json.dumps(predict_body(0)))
    assert 15_000 < size < 20_000
    # The oldest request may fill the budget; the others share it less one largest body
    # (service/edge/body.py): here room for the first body and one more, not two more.
    budget = 20_000 + size + size // 2
    with (
        gated_client(
            settings, gate, max_body_bytes=20_000, max_body_bytes_in_flight=budget
        ) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        wait_ready(client)
        first = hold_worker(pool, client, gate)  # holds its share of the budget meanwhile
        second = send(pool, client, "predict", predict_body(1))
        wait_until(lambda: queue_depth(client) == 1)
        third = send(pool, client, "predict", predict_body(2))
        time.sleep(0.3)  # time enough to be read and queued, were there room in the budget
        assert queue_depth(client) == 1
        assert not third.done()
        gate.opened.set()
        assert [f.result().status_code for f in (first, second, third)] == [200, 200, 200]


def test_the_budget_must_hold_one_body() -> None:
    with pytest.raises(
        ValidationError, match=r"max_body_bytes_in_flight \(2000\) must be at least"
    ):
        Settings(max_body_bytes=4000, max_body_bytes_in_flight=2000)


def test_a_fusing_engine_gets_its_mc_jobs_in_one_call_and_a_bad_job_fails_alone() -> None:
    torch.manual_seed(0)
    engine = Engine(build_model(MLPConfig(hidden=(32, 16), dropout=(0.5, 0.3))), fuse=True)
    calls: list[int] = []
    real = engine.uncertainty

    def spy(requests: Sequence[MCRequest]) -> list[UncertaintyStats]:
        calls.append(len(requests))
        return real(requests)

    engine.uncertainty = spy  # type: ignore[method-assign]
    X = torch.rand(2, 784)
    jobs = [
        Job(engine, X, 10, 1),
        Job(engine, X, 0, 2),
        Job(engine, X, 20, 3),
        Job(engine, X, None, None),
    ]
    answers: dict[int, tuple[Any, BaseException | None]] = {}
    execute(jobs, lambda job, result, error: answers.update({id(job): (result, error)}))
    # The three MC jobs in one call. It fails, and is split to find the job at fault: the
    # first job alone, then the other two together (the bad one fails), then each alone.
    assert calls == [3, 1, 2, 1, 1]
    good, bad, other, eval_job = (answers[id(job)] for job in jobs)
    assert isinstance(bad[1], ValueError)
    assert "samples must be at least 1, got 0" in str(bad[1])
    for (answer, error), n in ((good, 10), (other, 20)):
        assert error is None
        assert answer.samples == n
        assert [sum(v) for v in answer.votes] == [n, n]
    probs, error = eval_job
    assert error is None
    assert probs.shape == (2, 10)
    assert probs.device.type == "cpu"
