import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import pydantic_core
import torch
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.batching import (
    Batcher,
    InferenceError,
    MCAnswer,
    OverloadedError,
    TimedOutError,
)
from service.body import json_text
from service.observability import Metrics
from service.pixels import InstanceError, to_pixels
from service.registry import Registry, ServedModel
from service.schemas import (
    ErrorDetail,
    Health,
    ModelCard,
    ModelList,
    PredictRequest,
    PredictResponse,
    UncertaintyRequest,
    UncertaintyResponse,
)
from service.settings import Settings

RETRY_AFTER = {"Retry-After": "1"}
JSON_BOOLEANS = "json_booleans"


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


async def get_model(model: str, registry: RegistryDep) -> ServedModel:
    if not registry.serving:
        raise HTTPException(503, f"not ready: {registry.reason}", headers=RETRY_AFTER)
    served = registry.models.get(model)
    if served is None:
        known = ", ".join(sorted(registry.models))
        raise HTTPException(404, f"model {model!r} not found; available: {known}")
    return served


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
    served = await get_model(model, state.registry)
    booleans = getattr(state, JSON_BOOLEANS, True)
    return ModelCall(served, state.registry.settings, state.metrics, state.batcher, booleans)


ModelCallDep = Annotated[ModelCall, Depends(get_model_call)]


class JSONRequest(Request):
    """Parses JSON bodies with pydantic-core's parser: for 784 floats about 6x faster than the
    json module (bench/request_profile.py). A body it refuses goes to the json module, whose
    result or error (what FastAPI turns into a 4xx) is then the answer."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError:
                self._json = json.loads(json_text(body))
            # Without either token the pixels need no scan for booleans (service/pixels.py):
            # the bytes tell, as the text is UTF-8.
            setattr(self.state, JSON_BOOLEANS, b"true" in body or b"false" in body)
        return self._json


class JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return route


health = APIRouter(prefix="/health", tags=["health"])
operations = APIRouter(tags=["operations"])
v1 = APIRouter(prefix="/v1/models", tags=["v1"], route_class=JSONRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "Missing or invalid API key (when one is set)"},
    400: {
        "model": ErrorDetail,
        "description": "A body that is not UTF-8 text, or not valid gzip or deflate data",
    },
    404: {"model": ErrorDetail, "description": "Unknown model"},
    408: {"model": ErrorDetail, "description": "The body did not arrive in time"},
    413: {
        "model": ErrorDetail,
        "description": "Body (once inflated) or instances x samples over the limits",
    },
    415: {"model": ErrorDetail, "description": "A Content-Encoding other than gzip or deflate"},
    503: {
        "model": ErrorDetail,
        "description": "Not ready, overloaded (the queue or the body budget is full), or the "
        "inference process restarting; with Retry-After",
    },
    504: {"model": ErrorDetail, "description": "The request took longer than the timeout"},
}


@health.get("/live", response_model_exclude_none=True)
def live() -> Health:
    """The process is up."""
    return Health(status="live")


@health.get("/ready", responses={503: {"model": Health}}, response_model_exclude_none=True)
def ready(registry: RegistryDep, response: Response) -> Health:
    """200 once a model is loaded and serving, else 503 with the reason."""
    if registry.ready:
        return Health(status="ready")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    response.headers.update(RETRY_AFTER)
    return Health(status="not ready", reason=registry.reason)


@operations.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(metrics: MetricsDep) -> PlainTextResponse:
    """Prometheus metrics: requests, latency, batch sizes, MC samples, agreement, load failures."""
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@v1.get("", responses={401: ERRORS[401], 503: ERRORS[503]})
def list_models(registry: RegistryDep) -> ModelList:
    """Model cards of every served model."""
    if not registry.serving:
        raise HTTPException(503, f"not ready: {registry.reason}", headers=RETRY_AFTER)
    return ModelList(models=[m.card for m in registry.models.values()])


@v1.get("/{model}", responses={401: ERRORS[401], 404: ERRORS[404], 503: ERRORS[503]})
def model_card(served: ModelDep) -> ModelCard:
    """The model card: architecture, labels, input, metrics, checksum, sample limits."""
    return served.card


def invalid(loc: list[str | int], msg: str) -> HTTPException:
    """A 422 in FastAPI's own shape, for checks that need the settings or numpy."""
    return HTTPException(422, [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def check_limits(n: int, samples: int, settings: Settings) -> None:
    """n instances of `samples` passes each (1 for eval) within the limits, or 422 / 413."""
    if n > settings.max_instances:
        limit = settings.max_instances
        raise invalid(["instances"], f"instances: {n} exceeds the limit of {limit} per request")
    if n * samples > settings.max_total_samples:
        raise HTTPException(
            413,
            f"instances x samples = {n} x {samples} = {n * samples} exceeds the limit of "
            f"{settings.max_total_samples}",
        )


def _pixels(
    instances: list[Any], settings: Settings, samples: int = 1, booleans: bool = True
) -> torch.Tensor:
    """Limits first, then conversion: nothing is allocated for a request over the limits."""
    check_limits(len(instances), samples, settings)
    try:
        return torch.from_numpy(to_pixels(instances, booleans))
    except InstanceError as e:
        raise invalid(["instances", e.index], str(e)) from None


# Inference runs in the batcher's runner (service/batching.py), never on the event loop.
@v1.post("/{model}/predict", responses=ERRORS)
async def predict(body: PredictRequest, call: ModelCallDep) -> PredictResponse:
    """Eval-mode prediction: dropout off, deterministic."""
    served = call.served
    X = _pixels(body.instances, call.settings, booleans=call.may_hold_booleans)
    call.metrics.instances.labels(served.name, "eval").observe(len(X))
    probs = await batched(call.batcher.predict(served.engine, X))
    confidence, index = probs.max(-1)
    return PredictResponse.model_validate(
        {
            "model": served.name,
            "version": served.version,
            "predictions": [
                {"class_index": i, "label": served.labels[i], "probabilities": p, "confidence": c}
                for i, p, c in zip(index.tolist(), probs.tolist(), confidence.tolist(), strict=True)
            ],
        }
    )


def _uncertainty_items(answer: MCAnswer, served: ServedModel) -> list[dict[str, Any]]:
    threshold = served.abstain_below
    columns = {
        "class_index": answer.class_index,
        "agreement": answer.agreement,
        "agreement_interval": answer.agreement_interval,
        "abstain": [None if threshold is None else a < threshold for a in answer.agreement],
        "votes": answer.votes,
        "mean_probabilities": answer.mean_probabilities,
        "std_probabilities": answer.std_probabilities,
        "predictive_entropy": answer.predictive_entropy,
        "expected_entropy": answer.expected_entropy,
        "mutual_information": answer.mutual_information,
    }
    rows = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    for row in rows:
        row["label"] = served.labels[row["class_index"]]
    return rows


def check_samples(samples: int | None, served: ServedModel, settings: Settings) -> int:
    """N, the model's default if not given, within the limit; the model must have dropout."""
    samples = settings.default_samples if samples is None else samples
    if samples > settings.max_samples:
        raise invalid(
            ["samples"], f"samples: {samples} exceeds the maximum of {settings.max_samples}"
        )
    if not served.engine.supports_mc:
        raise HTTPException(422, f"model {served.name!r} has no dropout: MC dropout is undefined")
    return samples


async def answer_uncertainty(
    served: ServedModel,
    X: torch.Tensor,
    samples: int,
    seed: int | None,
    metrics: Metrics,
    batcher: Batcher,
) -> UncertaintyResponse:
    """The MC answer for pixels X [instances, 784] already checked against the limits."""
    answer = await batched(batcher.uncertainty(served.engine, X, samples, seed))
    metrics.instances.labels(served.name, "mc").observe(len(X))
    metrics.samples.labels(served.name).observe(samples)
    for agreement in answer.agreement:
        metrics.agreement.labels(served.name).observe(agreement)
    return UncertaintyResponse.model_validate(
        {
            "model": served.name,
            "version": served.version,
            "samples": samples,
            "seed": seed,
            "predictions": _uncertainty_items(answer, served),
        }
    )


@v1.post("/{model}/uncertainty", responses=ERRORS)
async def uncertainty(body: UncertaintyRequest, call: ModelCallDep) -> UncertaintyResponse:
    """MC dropout: N stochastic passes with dropout on; agreement, votes and entropies."""
    samples = check_samples(body.samples, call.served, call.settings)
    X = _pixels(body.instances, call.settings, samples, call.may_hold_booleans)
    return await answer_uncertainty(call.served, X, samples, body.seed, call.metrics, call.batcher)
