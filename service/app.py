import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from service import __version__
from service.api.admin import admin
from service.api.health import health, operations
from service.api.images import image_routes
from service.api.v1 import v1
from service.api.v2.routes import PREFIX as V2_PREFIX
from service.api.v2.routes import error as v2_error
from service.api.v2.routes import v2, v2_models
from service.edge.auth import ApiKey
from service.edge.body import BodyBudget, BodyGuard
from service.edge.observability import Metrics, RequestContext
from service.inference.batcher import Batcher, Runner
from service.inference.process import InferenceProcess
from service.inference.thread import InferenceThread
from service.page import page, static_files
from service.registry import Registry
from service.settings import Settings

log = logging.getLogger(__name__)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape, without echoing the (possibly megabytes of) input back."""
    assert isinstance(exc, RequestValidationError)
    detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    """HTTP errors outside any route, in each protocol's own form. Inside one, its protocol's
    route class shapes them; a path that no route matched (404, 405) has only its prefix to
    tell: {"error": ...} under /v2."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return v2_error(exc.status_code, str(exc.detail), exc.headers)
    return await http_exception_handler(request, exc)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    log.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request_id},
    )
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def publish_limits(app: FastAPI, settings: Settings) -> None:
    """Write this server's limits into its OpenAPI schema, so that clients (and fuzzers) see
    them; only instances x samples, a product, has no JSON-schema form (413 says it)."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema["components"]["schemas"]
            for name in ("PredictRequest", "UncertaintyRequest"):
                components[name]["properties"]["instances"]["maxItems"] = settings.max_instances
            for option in components["UncertaintyRequest"]["properties"]["samples"]["anyOf"]:
                if option.get("type") == "integer":
                    option["maximum"] = settings.max_samples
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def default_runner(settings: Settings) -> Runner:
    """The inference process (the default), or a thread of this process."""
    if settings.inference == "process":
        return InferenceProcess(settings)
    return InferenceThread()


def create_app(settings: Settings | None = None, runner: Runner | None = None) -> FastAPI:
    """The app of these settings, its batches computed by `runner` (default_runner's if None)."""
    settings = settings or Settings()
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    metrics = Metrics()
    registry = Registry(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Loading runs in a thread: /health/live answers at once and /health/ready says 503.
        loading = asyncio.create_task(asyncio.to_thread(registry.load))
        batcher = Batcher(settings, metrics, runner or default_runner(settings))
        await batcher.start()
        # Everything allocated so far (torch, the app) lives as long as the process: keep the
        # garbage collector's full passes off it. Without this, one every few thousand requests
        # walked the whole heap and stalled the event loop
        # (docs/performance.md#where-a-requests-time-goes).
        gc.collect()
        gc.freeze()
        yield {"registry": registry, "metrics": metrics, "batcher": batcher}
        await loading
        await batcher.stop()

    # /docs and /redoc from the assets fastapi-offline installs, not from a CDN: they work on a
    # network without internet access, and load no third party's scripts.
    app = FastAPIOffline(
        title="MC-dropout inference service",
        summary="Eval-mode predictions and Monte-Carlo-dropout uncertainty for the d2l.ai MLP",
        version=__version__,
        lifespan=lifespan,
        static_url="/docs/assets",
    )
    app.state.registry = registry  # for the process's signal handling (service/__main__.py)
    # The model and admin routes check it (service.api.deps.KeyedRoute).
    app.state.api_key = (
        None if settings.api_key is None else ApiKey(settings.api_key.get_secret_value())
    )
    app.include_router(health)
    app.include_router(operations)
    app.include_router(v1)
    app.include_router(v2)
    app.include_router(v2_models)
    app.include_router(admin)
    app.include_router(image_routes(settings))
    app.include_router(page)
    app.mount("/static", static_files(), name="static")
    # The last added runs first: ids and metrics see every answer, 401 and 413 included.
    budget = BodyBudget(settings.max_body_bytes_in_flight, settings.max_body_bytes)
    app.add_middleware(BodyGuard, settings=settings, budget=budget)
    app.add_middleware(RequestContext, metrics=metrics)
    publish_limits(app, settings)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    return app
