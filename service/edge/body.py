"""Request bodies at the edge: how long they may take to arrive, how large they may grow once
inflated, and how many of their bytes the server holds at once, all requests together.

Every route reads its body through BodyGuard's receive, so every route gets the same rules:
- 408 (and the connection closed) once the client has kept the server waiting
  `body_timeout_seconds` in all for the body's bytes;
- 413 (connection closed) past `max_body_bytes`: the declared Content-Length first, then the
  bytes as they come, inflated ones for a gzip or deflate Content-Encoding (415 for another);
- the bytes held in BodyBudget from their arrival (inflation's output as it is produced) until
  the request is answered, or its route has dropped them (release_body): past the budget a
  request waits, unread, and TCP flow control holds the rest of its body in the client; 503 with
  Retry-After if it waits past the request timeout;
- 499 (logged at info) for a client that hangs up before its body is complete.
Errors are starlette HTTPExceptions raised from receive: each protocol answers them in its own
form (FastAPI passes them through the body's parsing).
"""

import asyncio
import logging
import time
import zlib

from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.edge import RETRY_AFTER
from service.settings import Settings

log = logging.getLogger(__name__)

CLOSE = {"Connection": "close"}
# HTTP's content codings and the zlib window bits that read them ("deflate" is zlib's format).
CODINGS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}
CLIENT_CLOSED = 499  # nginx's code: the client closed the connection before the answer
STATE_KEY = "request_body"  # the request's RequestBody, in its scope's state
INFLATE_STEP = 64 * 1024  # bytes inflated at a time, on the event loop, between other work


class BodyBudget:
    """At most `limit` bytes of request bodies held at once, all requests together. A request
    takes bytes as they arrive and gives them all back when it is answered; one that would go
    over waits. The oldest request holding bytes may use the whole budget, the others together
    at most `limit - largest`: so the oldest can always take the rest of its body (at most
    `largest`), and requests half-read never wait for each other forever."""

    def __init__(self, limit: int, largest: int) -> None:
        if largest > limit:
            raise ValueError(f"largest ({largest}) must not exceed the limit ({limit})")
        self.limit, self.largest = limit, largest
        self.used = 0
        self.held: dict[object, int] = {}  # insertion order: the first is the oldest
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (bytes asked, its waiter)

    async def take(self, holder: object, n: int) -> None:
        self.held.setdefault(holder, 0)
        while not self._fits(holder, n):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((n, waiter))
            try:
                await waiter
            finally:
                if not waiter.done():
                    self._waiters.remove((n, waiter))
        self.held[holder] += n
        self.used += n

    def release(self, holder: object, n: int | None = None) -> None:
        """Gives back n bytes that `holder` took, or all of them (and its place in line)."""
        held = self.held.get(holder)
        if held is None:
            return
        if n is None:
            del self.held[holder]
            n = held
        else:
            self.held[holder] = held - n
        self.used -= n
        if not self._waiters:
            return
        # All re-check (the oldest may have changed), the smallest asks first: a small body is
        # not kept waiting behind large ones (a gzip flood's inflations, say) for room it fits in.
        waiters, self._waiters = sorted(self._waiters, key=lambda w: w[0]), []
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _fits(self, holder: object, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        oldest = next(iter(self.held))
        return holder is oldest or self.used - self.held[oldest] + n <= self.limit - self.largest


class RequestBody:
    """One request's body as its route receives it (see the module's text)."""

    def __init__(
        self, receive: Receive, headers: dict[bytes, bytes], settings: Settings, budget: BodyBudget
    ) -> None:
        self._receive, self.settings, self.budget = receive, settings, budget
        self.max_bytes = settings.max_body_bytes
        self.waited = 0.0  # seconds spent waiting for the client's bytes
        self.received = 0  # bytes as they came
        self.size = 0  # bytes once inflated
        self.complete = False
        declared = headers.get(b"content-length", b"")
        self.declared = int(declared) if declared.isdigit() else None
        coding = headers.get(b"content-encoding", b"identity").strip().lower()
        self.coding = coding.decode("latin-1")
        self.inflater = zlib.decompressobj(CODINGS[coding]) if coding in CODINGS else None

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()  # after the body: the disconnect, for instance
        if self.coding != "identity" and self.inflater is None:
            raise HTTPException(
                415,
                f"Content-Encoding {self.coding!r} is not supported: use gzip or deflate",
                CLOSE,
            )
        if self.declared is not None and self.declared > self.max_bytes:
            raise self._too_large()
        message = await self._wait_for_client()
        if message["type"] == "http.disconnect":
            log.info("the client closed the connection before its body was complete")
            raise HTTPException(CLIENT_CLOSED, "the client closed the request")
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        self.received += len(chunk)
        if self.received > self.max_bytes:  # compressed too: empty deflate blocks inflate to 0
            raise self._too_large()
        if self.inflater is not None:
            message = {**message, "body": await self._inflate(chunk, more)}
        else:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise self._too_large()
            await self._take(len(chunk))
        self.complete = not more
        return message

    async def _take(self, n: int) -> None:
        """n bytes of the budget, waiting at most request_timeout_seconds (else 503)."""
        if n == 0:
            return
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                await self.budget.take(self, n)
        except TimeoutError:
            raise HTTPException(
                503,
                "overloaded: request bodies in flight fill the server's budget; retry later",
                {**RETRY_AFTER, **CLOSE},
            ) from None

    async def _wait_for_client(self) -> Message:
        """The next message, within what is left of body_timeout_seconds (else 408)."""
        limit = self.settings.body_timeout_seconds
        start = time.monotonic()
        try:
            async with asyncio.timeout(limit - self.waited):
                return await self._receive()
        except TimeoutError:
            log.info("a request body took longer than %g s to arrive", limit)
            raise HTTPException(
                408, f"the request body did not arrive within {limit:g} s", CLOSE
            ) from None
        finally:
            self.waited += time.monotonic() - start

    async def _inflate(self, chunk: bytes, more: bool) -> bytes:
        """chunk inflated INFLATE_STEP bytes at a time (a small body may inflate a thousandfold):
        each step's room taken in the budget before its bytes exist, and never past
        max_body_bytes; other requests are served between steps."""
        assert self.inflater is not None
        parts, data = [], chunk
        while True:
            room = min(INFLATE_STEP, self.max_bytes - self.size + 1)
            await self._take(room)
            try:
                out = self.inflater.decompress(data, room)
            except zlib.error as e:
                raise HTTPException(
                    400, f"the body is not valid {self.coding} data: {e}", CLOSE
                ) from None
            self.budget.release(self, room - len(out))
            self.size += len(out)
            if self.size > self.max_bytes:
                raise self._too_large(" once inflated")
            parts.append(out)
            data = self.inflater.unconsumed_tail
            if not data and len(out) < room:
                break
            await asyncio.sleep(0)
        if self.inflater.unused_data:
            raise HTTPException(400, f"the body has data after its {self.coding} stream", CLOSE)
        if not more and not self.inflater.eof:
            raise HTTPException(400, f"the body is truncated {self.coding} data", CLOSE)
        return b"".join(parts)

    def _too_large(self, how: str = "") -> HTTPException:
        return HTTPException(
            413, f"request body exceeds the limit of {self.max_bytes} bytes{how}", CLOSE
        )


class BodyGuard:
    """Gives each HTTP request's app its RequestBody's receive, and frees the request's share of
    the budget once it is answered (or fails), or when its route calls release_body: a route
    that keeps none of its body's bytes while it waits for the engine (V2's) lets the next
    requests' bodies in meanwhile."""

    def __init__(self, app: ASGIApp, settings: Settings, budget: BodyBudget) -> None:
        self.app, self.settings, self.budget = app, settings, budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        body = RequestBody(receive, headers, self.settings, self.budget)
        if body.inflater is not None:
            # Routes see the inflated body: no encoding, and not the compressed length. (In
            # place: the middlewares outside read the route that the router sets in the scope.)
            dropped = (b"content-encoding", b"content-length")
            scope["headers"] = [h for h in scope["headers"] if h[0] not in dropped]
        scope.setdefault("state", {})[STATE_KEY] = body
        try:
            await self.app(scope, body.receive, send)
        finally:
            self.budget.release(body)


def json_text(body: bytes) -> str:
    """A JSON body's text, which must be UTF-8 (RFC 8259): json.loads would also read UTF-16 and
    UTF-32, where a true is no b"true" to the byte checks of service/api/v1.py. Else 400."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPException(400, f"the body is not UTF-8 text (JSON must be UTF-8): {e}") from None


def release_body(state: State) -> None:
    """The request's share of the budget given back: it has dropped every copy of its body."""
    body: RequestBody = getattr(state, STATE_KEY)
    body.budget.release(body)
