"""The synchronous client."""

import itertools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

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


class Client:
    """The v1 REST API of an MC-dropout service, one method per call.

    `timeout` (seconds, or an httpx.Timeout) bounds each HTTP request; a 503 is retried up to
    `retries` times after the server's Retry-After (at most `max_retry_wait` seconds each);
    `api_key`, for a server that requires one, is sent as `Authorization: Bearer KEY`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = RetryPolicy(retries=retries, max_wait=max_retry_wait)
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=auth_headers(api_key), transport=transport
        )
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> httpx.Response:
        for attempt in itertools.count():
            response = self._http.request(call.method, call.path, json=call.json)
            wait = self.retry.delay(response, attempt)
            if wait is None:
                return raise_for_status(response)
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _json(self, call: Call) -> Any:
        return self._send(call).json()

    def live(self) -> Health:
        """GET /health/live."""
        return Health.model_validate(self._json(Call("GET", "/health/live")))

    def ready(self) -> Health:
        """GET /health/ready: a not-ready server is an answer here, not an error."""
        return ready_health(self._http.get("/health/ready"))

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> Health:
        """Poll /health/ready (connection refused counts as not yet) until ready or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.ready()
                if health.ready:
                    return health
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the service was not ready within {timeout} s")
            self._sleep(interval)

    def models(self) -> list[ModelCard]:
        """GET /v1/models: the cards of every served model."""
        return ModelList.model_validate(self._json(Call("GET", "/v1/models"))).models

    def model(self, name: str) -> ModelCard:
        """GET /v1/models/{name}."""
        return ModelCard.model_validate(self._json(Call("GET", model_path(name))))

    def predict(self, model: str, images: Images) -> PredictResult:
        """Eval-mode prediction (dropout off) for one image or a batch."""
        return PredictResult.model_validate(self._json(predict_call(model, images)))

    def uncertainty(
        self, model: str, images: Images, *, samples: int | None = None, seed: int | None = None
    ) -> UncertaintyResult:
        """MC dropout: `samples` passes (the server's default when None); a seed reproduces."""
        call = uncertainty_call(model, images, samples, seed)
        return UncertaintyResult.model_validate(self._json(call))
