"""The optional API key: when set, model and admin routes need it; health, metrics and docs
stay open. The admin routes also need their own token (service/admin.py)."""

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PROTECTED_PREFIXES = ("/v1/", "/v2/models", "/admin/")


def presented_key(headers: dict[bytes, bytes]) -> bytes:
    """`Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer":
        return credentials.strip()
    return headers.get(b"x-api-key", b"")


class ApiKey:
    def __init__(self, app: ASGIApp, key: str) -> None:
        if not key:
            raise ValueError("api_key must not be empty; leave it unset to turn auth off")
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        # compare_digest takes as long for a near miss as for a wild guess.
        if hmac.compare_digest(presented_key(dict(scope["headers"])), self.key):
            await self.app(scope, receive, send)
            return
        message = "missing or invalid API key"
        body = {"error": message} if path.startswith("/v2/") else {"detail": message}
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
