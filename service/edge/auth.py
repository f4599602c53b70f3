"""The optional API key: when set, the model and admin routes need it (their routers' route
class, service.api.deps.KeyedRoute, checks it); health, metrics, docs and the page stay open.
The admin routes also need their own token (service/api/admin.py)."""

import hmac
from collections.abc import Mapping

from starlette.exceptions import HTTPException


def presented_key(headers: Mapping[str, str]) -> str:
    """`Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip(" \t\r\n\v\f")  # what bytes.strip() took
    return headers.get("x-api-key", "")


class ApiKey:
    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("api_key must not be empty; leave it unset to turn auth off")
        self.key = key.encode()

    def check(self, headers: Mapping[str, str]) -> None:
        """Nothing, or 401 with WWW-Authenticate, in the form of the route's protocol."""
        # compare_digest takes as long for a near miss as for a wild guess. The headers are
        # latin-1 (Starlette's decoding): encoded back, the bytes are those that were sent.
        if not hmac.compare_digest(presented_key(headers).encode("latin-1"), self.key):
            raise HTTPException(
                401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
            )
