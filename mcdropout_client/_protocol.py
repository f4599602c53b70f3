"""What the sync and async clients share: paths, bodies, retry decisions, parsing."""

import email.utils
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from mcdropout_client.errors import raise_for_status
from mcdropout_client.images import Images, to_instances
from mcdropout_client.results import Health

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


def model_path(model: str, action: str = "") -> str:
    return f"/v1/models/{quote(model, safe='')}{action}"


def predict_call(model: str, images: Images) -> Call:
    return Call("POST", model_path(model, "/predict"), {"instances": to_instances(images)})


def uncertainty_call(model: str, images: Images, samples: int | None, seed: int | None) -> Call:
    body: dict[str, Any] = {"instances": to_instances(images)}
    if samples is not None:
        body["samples"] = samples
    if seed is not None:
        body["seed"] = seed
    return Call("POST", model_path(model, "/uncertainty"), body)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on 503: `retries` more attempts, each after the server's Retry-After.

    Without Retry-After the waits double from `backoff`. A wait longer than `max_wait` is not
    made: the 503 is raised at once, as NotReadyError.
    """

    retries: int = 3
    max_wait: float = 30.0
    backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.max_wait < 0 or self.backoff < 0:
            raise ValueError("max_wait and backoff must be 0 or more seconds")

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to stop here."""
        if response.status_code != 503 or attempt >= self.retries:
            return None
        wait = retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = self.backoff * 2**attempt
        return wait if wait <= self.max_wait else None


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def ready_health(response: httpx.Response) -> Health:
    if response.status_code != 503:
        return Health.model_validate(raise_for_status(response).json())
    try:
        return Health.model_validate(response.json())
    except ValueError:  # a 503 from something in front of the service
        return Health(status="not ready", reason=response.text or response.reason_phrase)
