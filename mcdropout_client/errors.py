"""Exceptions that carry the server's status code and message."""

from typing import Any

import httpx


class MCDropoutError(Exception):
    """Base of this client's errors (network failures stay httpx.TransportError)."""


class APIError(MCDropoutError):
    """The server answered with an error status; `message` is what it said."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.detail = status, message, detail


class InvalidInputError(APIError):
    """400 or 422: the request was refused; `detail` keeps the server's list of errors."""


class UnauthorizedError(APIError):
    """401: the server requires an API key, and none or another was sent."""


class NotFoundError(APIError):
    """404: no such model (or version)."""


class TooLargeError(APIError):
    """413: the body, the instances or instances x samples exceed the server's limits."""


class NotReadyError(APIError):
    """503: no model serves yet; raised once the retries are spent."""


class ServerError(APIError):
    """5xx other than 503: a bug on the server, logged there."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidInputError,
    401: UnauthorizedError,
    404: NotFoundError,
    413: TooLargeError,
    422: InvalidInputError,
    503: NotReadyError,
}


def _message(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase, None
    # v1 answers {"detail": str | [{"loc", "msg", "type"}]}, v2 {"error": str}.
    detail = body.get("detail", body.get("error")) if isinstance(body, dict) else body
    if isinstance(detail, str):
        return detail, detail
    if isinstance(detail, list):
        messages = [e["msg"] if isinstance(e, dict) and "msg" in e else str(e) for e in detail]
        return "; ".join(messages), detail
    return response.reason_phrase, detail


def raise_for_status(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    message, detail = _message(response)
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    raise kind(status, message, detail)
