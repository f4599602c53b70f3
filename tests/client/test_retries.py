"""503 is retried after Retry-After, a bounded number of times; other errors never are."""

import asyncio
import email.utils
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from mcdropout_client import (
    APIError,
    AsyncClient,
    Client,
    NotReadyError,
    ServerError,
    UnauthorizedError,
)
from mcdropout_client._protocol import retry_after

CARD_LIST: dict[str, list[object]] = {"models": []}


def scripted(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that plays the answers in order and records the requests."""
    seen: list[httpx.Request] = []
    queue: Iterator[httpx.Response] = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(queue)

    return httpx.MockTransport(handler), seen


def busy(retry: str | None = None) -> httpx.Response:
    headers = {} if retry is None else {"Retry-After": retry}
    return httpx.Response(503, headers=headers, json={"detail": "not ready: loading models"})


def client_with(
    transport: httpx.MockTransport, retries: int = 3, max_retry_wait: float = 30
) -> tuple[Client, list[float]]:
    waits: list[float] = []
    client = Client(
        "http://service", transport=transport, retries=retries, max_retry_wait=max_retry_wait
    )
    client._sleep = waits.append
    return client, waits


def test_retry_after_is_honoured_then_the_answer_returned() -> None:
    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    transport, seen = scripted(busy("2"), busy(soon), httpx.Response(200, json=CARD_LIST))
    client, waits = client_with(transport)
    assert client.models() == []
    assert len(seen) == 3
    assert waits[0] == 2.0
    assert 15 < waits[1] <= 20  # an HTTP date: the seconds from now until then


def test_retries_are_bounded_and_the_503_raised() -> None:
    transport, seen = scripted(*[busy("1")] * 4)
    client, waits = client_with(transport, retries=3)
    with pytest.raises(NotReadyError) as caught:
        client.predict("m", [[0.0] * 784])
    assert (caught.value.status, caught.value.message) == (503, "not ready: loading models")
    assert (len(seen), waits) == (4, [1.0, 1.0, 1.0])


def test_without_retry_after_the_waits_double() -> None:
    transport, _ = scripted(busy(), busy(), busy(), httpx.Response(200, json=CARD_LIST))
    client, waits = client_with(transport)
    client.models()
    assert waits == [0.5, 1.0, 2.0]


def test_a_wait_longer_than_allowed_is_not_made() -> None:
    transport, seen = scripted(busy("120"))
    client, waits = client_with(transport, max_retry_wait=10)
    with pytest.raises(NotReadyError):
        client.models()
    assert (len(seen), waits) == (1, [])


@pytest.mark.parametrize("status", [500, 404, 422])
def test_other_errors_are_not_retried(status: int) -> None:
    transport, seen = scripted(httpx.Response(status, json={"detail": "no"}))
    client, waits = client_with(transport)
    with pytest.raises(APIError) as caught:
        client.models()
    assert (caught.value.status, caught.value.message) == (status, "no")
    assert (len(seen), waits) == (1, [])
    assert isinstance(caught.value, ServerError) == (status == 500)


def test_retry_after_forms() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(" 0 ") == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    with pytest.raises(ValueError, match="retries must be 0 or more"):
        Client(retries=-1)


def test_async_client_retries_the_same_way() -> None:
    transport, seen = scripted(busy("1"), busy("2"), httpx.Response(200, json=CARD_LIST))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> None:
        async with AsyncClient("http://service", transport=transport) as client:
            client._sleep = record
            assert await client.models() == []

    asyncio.run(run())
    assert (len(seen), waits) == (3, [1.0, 2.0])


def test_a_server_with_no_model_is_retried_then_refused(empty_server: str) -> None:
    with Client(empty_server, retries=2) as client:
        waits: list[float] = []
        client._sleep = waits.append
        with pytest.raises(NotReadyError) as caught:
            client.predict("tiny", [[0.5] * 784])
        assert (
            caught.value.message
            == "not ready: no valid checkpoint could be loaded (see server log)"
        )
        assert waits == [1.0, 1.0]  # the server's Retry-After: 1
        health = client.ready()
        assert (health.ready, health.status) == (False, "not ready")
        assert health.reason == "no valid checkpoint could be loaded (see server log)"
        assert client.live().status == "live"
    with Client(empty_server) as client, pytest.raises(TimeoutError, match=r"within 0\.3 s"):
        client.wait_ready(timeout=0.3, interval=0.1)


def test_the_timeout_bounds_each_request() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(url, timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
            client.live()

        async def run() -> None:
            async with AsyncClient(url, timeout=0.2) as client:
                await client.live()

        with pytest.raises(httpx.ReadTimeout):
            asyncio.run(run())


def test_the_api_key_is_sent_and_a_401_raised() -> None:
    refused = httpx.Response(401, json={"detail": "missing or invalid API key"})
    transport, seen = scripted(httpx.Response(200, json=CARD_LIST), refused)
    with Client("http://service", api_key="s3cret", transport=transport) as client:
        assert client.models() == []
        with pytest.raises(UnauthorizedError) as caught:
            client.models()
    assert [r.headers["authorization"] for r in seen] == ["Bearer s3cret"] * 2
    assert (caught.value.status, caught.value.message) == (401, "missing or invalid API key")
    transport, seen = scripted(httpx.Response(200, json=CARD_LIST))
    with Client("http://service", transport=transport) as client:
        client.models()
    assert "authorization" not in seen[0].headers
