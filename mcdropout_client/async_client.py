"""The asynchronous client: the same methods as Client, awaited."""

import itertools
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from mcdropout_client._protocol import (
    DEFAULT_URL,
    Call,
    RetryPolicy,
    auth_headers,
    model_path,
    predict_call,
    ready_health,
    uncertainty_call,
)
from mcdropout_client.errors import raise_for_status
from mcdropout_client.images import Images
from mcdropout_client.results import (
    Health,
    ModelCard,
    ModelList,
    PredictResult,
    UncertaintyResult,
)


class AsyncClient:
    """Client's twin for asyncio (or trio): `async with AsyncClient(url) as client: ...`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = RetryPolicy(retries=retries, max_wait=max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=auth_headers(api_key), transport=transport
        )
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        for attempt in itertools.count():
            response = await self._http.request(call.method, call.path, json=call.json)
            wait = self.retry.delay(response, attempt)
            if wait is None:
                return raise_for_status(response)
            await self._sleep(wait)
        raise AssertionError("unreachable")

    async def _json(self, call: Call) -> Any:
        return (await self._send(call)).json()

    async def live(self) -> Health:
        """GET /health/live."""
        return Health.model_validate(await self._json(Call("GET", "/health/live")))

    async def ready(self) -> Health:
        """GET /health/ready: a not-ready server is an answer here, not an error."""
        return ready_health(await self._http.get("/health/ready"))

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> Health:
        """Poll /health/ready (connection refused counts as not yet) until ready or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = await self.ready()
                if health.ready:
                    return health
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the service was not ready within {timeout} s")
            await self._sleep(interval)

    async def models(self) -> list[ModelCard]:
        """GET /v1/models: the cards of every served model."""
        return ModelList.model_validate(await self._json(Call("GET", "/v1/models"))).models

    async def model(self, name: str) -> ModelCard:
        """GET /v1/models/{name}."""
        return ModelCard.model_validate(await self._json(Call("GET", model_path(name))))

    async def predict(self, model: str, images: Images) -> PredictResult:
        """Eval-mode prediction (dropout off) for one image or a batch."""
        return PredictResult.model_validate(await self._json(predict_call(model, images)))

    async def uncertainty(
        self, model: str, images: Images, *, samples: int | None = None, seed: int | None = None
    ) -> UncertaintyResult:
        """MC dropout: `samples` passes (the server's default when None); a seed reproduces."""
        call = uncertainty_call(model, images, samples, seed)
        return UncertaintyResult.model_validate(await self._json(call))
