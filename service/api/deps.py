"""What every protocol's routes share: the server's objects as dependencies, the API key, the
model lookup, the limits, and the batcher's failures as HTTP errors. Each protocol shapes the
HTTPExceptions raised here in its own form (v1 FastAPI's {"detail": ...}, V2 {"error": ...})."""

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute

from service.edge import RETRY_AFTER
from service.edge.auth import ApiKey
from service.edge.observability import Metrics
from service.inference.batcher import Batcher
from service.inference.jobs import InferenceError, OverloadedError, TimedOutError
from service.registry import Registry, ServedModel
from service.settings import Settings

JSON_BOOLEANS = "json_booleans"  # request state: the JSON body may hold true or false tokens


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.state.registry
    return registry


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


async def get_batcher(request: Request) -> Batcher:
    batcher: Batcher = request.state.batcher
    return batcher


# Dependencies are `async def`: FastAPI would run a plain `def` in its thread pool, a thread
# hand-off per dependency per request.
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]


class KeyedRoute(APIRoute):
    """A route behind the API key, when one is set (app.state.api_key): the routers of the
    model and admin routes use this route class, or one derived from it. The key is checked
    before anything else: FastAPI reads and parses a route's body before its dependencies run,
    and a client without the key must not get the server to read, inflate or hold a body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def keyed(request: Request) -> Response:
            api_key: ApiKey | None = request.app.state.api_key
            if api_key is not None:
                api_key.check(request.headers)
            return await handler(request)

        return keyed


def check_serving(registry: Registry) -> None:
    """503 with Retry-After until models are loaded. Serving, not ready: while draining at
    shutdown, requests that still arrive are answered."""
    if not registry.serving:
        raise HTTPException(503, f"not ready: {registry.reason}", headers=RETRY_AFTER)


def find_model(registry: Registry, name: str, version: str | None = None) -> ServedModel:
    """The served model (at that version, if one is asked for); 503 until models are loaded."""
    check_serving(registry)
    served = registry.models.get(name)
    if served is None:
        known = ", ".join(sorted(registry.models))
        raise HTTPException(404, f"model {name!r} not found; available: {known}")
    if version is not None and version != served.version:
        raise HTTPException(
            404, f"model {name!r} has no version {version!r}; available: {served.version}"
        )
    return served


async def get_model(model: str, request: Request) -> ServedModel:
    """The path's model, and its version where the path has one (V2)."""
    return find_model(request.state.registry, model, request.path_params.get("version"))


ModelDep = Annotated[ServedModel, Depends(get_model)]


@dataclass(frozen=True)
class ModelCall:
    """What a route of one model needs, from one dependency: each dependency costs FastAPI a
    few microseconds a request, and the predict and uncertainty routes are the hot path."""

    served: ServedModel
    settings: Settings
    metrics: Metrics
    batcher: Batcher
    may_hold_booleans: bool  # a JSON body with a true or false token, or no JSON body


async def get_model_call(model: str, request: Request) -> ModelCall:
    state = request.state
    served = find_model(state.registry, model)
    booleans = getattr(state, JSON_BOOLEANS, True)
    return ModelCall(served, state.registry.settings, state.metrics, state.batcher, booleans)


ModelCallDep = Annotated[ModelCall, Depends(get_model_call)]
T = TypeVar("T")


async def batched(result: Awaitable[T]) -> T:
    """The batcher's answer, or 503 with Retry-After (queue full, or the inference process
    exited), or 504 (timed out)."""
    try:
        return await result
    except OverloadedError as e:
        raise HTTPException(503, f"overloaded: {e}; retry later", headers=RETRY_AFTER) from None
    except TimedOutError as e:
        raise HTTPException(504, str(e)) from None
    except InferenceError as e:
        raise HTTPException(503, f"unavailable: {e}", headers=RETRY_AFTER) from None


class LimitError(Exception):
    """A request over the instance limit (field "instances") or the instances x samples one
    (field None); each protocol answers it with its own status."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def check_limits(
    instances: int, samples: int | None, settings: Settings, samples_name: str = "samples"
) -> None:
    """`instances` of `samples` passes each (None: eval, one pass), checked before any data is
    converted; else LimitError, whose message names the protocol's own field for N."""
    if instances > settings.max_instances:
        raise LimitError(
            "instances",
            f"instances: {instances} exceeds the limit of {settings.max_instances} per request",
        )
    n = samples or 1
    if instances * n > settings.max_total_samples:
        raise LimitError(
            None,
            f"instances x {samples_name} = {instances} x {n} = {instances * n} exceeds the "
            f"limit of {settings.max_total_samples}",
        )
