"""The v1 REST routes: list, model card, predict (eval mode) and uncertainty (MC dropout), in
JSON; the image routes (service/api/images.py) answer the same way for an upload."""

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
import torch
from fastapi import APIRouter, HTTPException, Request, Response

from service.api.deps import (
    JSON_BOOLEANS,
    KeyedRoute,
    LimitError,
    ModelCallDep,
    ModelDep,
    RegistryDep,
    batched,
    check_limits,
    check_serving,
)
from service.api.schemas import (
    ErrorDetail,
    ModelCard,
    ModelList,
    PredictRequest,
    PredictResponse,
    UncertaintyRequest,
    UncertaintyResponse,
)
from service.edge.body import json_text
from service.edge.observability import Metrics
from service.inference.batcher import Batcher
from service.inference.jobs import MCAnswer
from service.inputs.pixels import InstanceError, to_pixels
from service.registry import ServedModel
from service.settings import Settings


class JSONRequest(Request):
    """Parses JSON bodies with pydantic-core's parser, several times faster than the json module
    for 784 floats (docs/performance.md#where-a-requests-time-goes, bench/request_profile.py). A
    body it refuses goes to the json module, whose result or error (what FastAPI turns into a
    4xx) is then the answer."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError:
                self._json = json.loads(json_text(body))
            # Without either token the pixels need no scan for booleans (service/inputs/pixels.py):
            # the bytes tell, as the text is UTF-8.
            setattr(self.state, JSON_BOOLEANS, b"true" in body or b"false" in body)
        return self._json


class JSONRoute(KeyedRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return route


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


@v1.get("", responses={401: ERRORS[401], 503: ERRORS[503]})
def list_models(registry: RegistryDep) -> ModelList:
    """Model cards of every served model."""
    check_serving(registry)
    return ModelList(models=[m.card for m in registry.models.values()])


@v1.get("/{model}", responses={401: ERRORS[401], 404: ERRORS[404], 503: ERRORS[503]})
def model_card(served: ModelDep) -> ModelCard:
    """The model card: architecture, labels, input, metrics, checksum, sample limits."""
    return served.card


def invalid(loc: list[str | int], msg: str) -> HTTPException:
    """A 422 in FastAPI's own shape, for checks that need the settings or numpy."""
    return HTTPException(422, [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def within_limits(instances: int, samples: int, settings: Settings) -> None:
    """v1's answer to LimitError: 422 naming `instances` for too many, else 413."""
    try:
        check_limits(instances, samples, settings)
    except LimitError as e:
        if e.field is not None:
            raise invalid([e.field], e.message) from None
        raise HTTPException(413, e.message) from None


def _pixels(
    instances: list[Any], settings: Settings, samples: int = 1, booleans: bool = True
) -> torch.Tensor:
    """Limits first, then conversion: nothing is allocated for a request over the limits."""
    within_limits(len(instances), samples, settings)
    try:
        return torch.from_numpy(to_pixels(instances, booleans))
    except InstanceError as e:
        raise invalid(["instances", e.index], str(e)) from None


# Inference runs in the batcher's runner (service/inference/), never on the event loop.
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


def uncertainty_items(answer: MCAnswer, served: ServedModel) -> list[dict[str, Any]]:
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
            "predictions": uncertainty_items(answer, served),
        }
    )


@v1.post("/{model}/uncertainty", responses=ERRORS)
async def uncertainty(body: UncertaintyRequest, call: ModelCallDep) -> UncertaintyResponse:
    """MC dropout: N stochastic passes with dropout on; agreement, votes and entropies."""
    samples = check_samples(body.samples, call.served, call.settings)
    X = _pixels(body.instances, call.settings, samples, call.may_hold_booleans)
    return await answer_uncertainty(call.served, X, samples, body.seed, call.metrics, call.batcher)
