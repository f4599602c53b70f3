"""The KServe V2 Open Inference Protocol's routes: server metadata and health (open), model
metadata, readiness and infer (behind the API key, when one is set).

tritonclient posts infer bodies without a Content-Type header, so the body is read raw and
checked here rather than by FastAPI. Every error is {"error": "..."}, as the protocol asks.
"""

import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from service.api.deps import BatcherDep, KeyedRoute, ModelDep, RegistryDep
from service.api.v2.infer import INPUT, OUTPUTS, Plan, pixel_input, plan, run, within_limits
from service.api.v2.tensors import (
    V2Error,
    check_pixel_shape,
    encode_response,
    parse_request,
    read_pixels,
    split_body,
)
from service.edge import RETRY_AFTER
from service.edge.body import release_body
from service.inputs.pixels import FEATURES
from service.registry import ServedModel
from service.settings import Settings

log = logging.getLogger(__name__)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type="application/json")


class V2Route(APIRoute):
    """Answers every failure of a /v2 route in the protocol's {"error": ...} form."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except V2Error as e:
                return error(e.status, e.message, e.headers)
            except HTTPException as e:
                return error(e.status_code, str(e.detail), e.headers)
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error(500, "internal server error")

        return guarded


class V2KeyedRoute(V2Route, KeyedRoute):
    """A V2 route behind the API key: its 401 in the protocol's form."""


PREFIX = "/v2"
v2 = APIRouter(prefix=PREFIX, tags=["v2"], route_class=V2Route)
v2_models = APIRouter(prefix=f"{PREFIX}/models", tags=["v2"], route_class=V2KeyedRoute)


class V2ErrorBody(BaseModel):
    error: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": V2ErrorBody, "description": V2_ERROR_TEXT[code]} for code in codes}


V2_ERROR_TEXT = {
    400: "Bad request: the message names the field and the reason",
    401: "Missing or invalid API key (when one is set)",
    404: "Unknown model or version",
    408: "The body did not arrive in time",
    413: "Body (once inflated) or tensor over the limits",
    415: "Unsupported Content-Encoding",
    503: "Not ready, or overloaded: the queue or the body budget is full (with Retry-After)",
    504: "The request took longer than the timeout",
}
MODEL_ERRORS = _errors(400, 401, 404, 503)
INFER_ERRORS = _errors(400, 401, 404, 408, 413, 415, 503, 504)
# The versioned routes share their function with the plain ones, which read the version from
# the path themselves: declare it for the schema.
VERSION = {
    "parameters": [
        {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
}


@v2.get("")
def server_metadata(request: Request) -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions served."""
    return {
        "name": "mcdropout-service",
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }


@v2.get("/health/live")
def live() -> dict[str, bool]:
    """The process is up."""
    return {"live": True}


@v2.get("/health/ready", responses=_errors(503))
def ready(registry: RegistryDep) -> dict[str, bool]:
    """200 once a model serves, else 503 with the reason (also while shutting down)."""
    if not registry.ready:
        raise V2Error(503, f"not ready: {registry.reason}", RETRY_AFTER)
    return {"ready": True}


@v2_models.get("/{model}", responses=MODEL_ERRORS)
@v2_models.get("/{model}/versions/{version}", responses=MODEL_ERRORS, openapi_extra=VERSION)
def model_metadata(served: ModelDep) -> dict[str, Any]:
    """Model metadata: the input and every output, with -1 for the batch axis."""
    classes = len(served.labels)
    return {
        "name": served.name,
        "versions": [served.version],
        "platform": "pytorch_safetensors",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": [-1, *(classes if d == "classes" else d for d in dims)],
            }
            for name, (datatype, dims) in OUTPUTS.items()
        ],
    }


@v2_models.get("/{model}/ready", responses=MODEL_ERRORS)
@v2_models.get("/{model}/versions/{version}/ready", responses=MODEL_ERRORS, openapi_extra=VERSION)
def model_ready(served: ModelDep) -> dict[str, Any]:
    """200 when the model serves (404 unknown, 503 while loading)."""
    return {"name": served.name, "ready": True}


@dataclass(frozen=True)
class Call:
    """What an infer request asks for, and all it keeps of its body while the engine works."""

    X: torch.Tensor  # [instances, 784] float32
    plan: Plan
    head: dict[str, Any]  # of the response: model, version, id, parameters


async def read_body(request: Request) -> bytes:
    """The whole body, not kept by the request (Starlette's body() would keep it)."""
    return b"".join([chunk async for chunk in request.stream()])


def parse_call(raw: bytes, request: Request, served: ServedModel, settings: Settings) -> Call:
    """The body checked and converted. The raw bytes, the JSON and its parsed numbers die here,
    before the request waits for the engine: only the pixels wait."""
    header, binary = split_body(raw, request.headers.get("inference-header-content-length"))
    body = parse_request(header)
    asked = plan(body, served, settings)
    tensor = pixel_input(body)
    within_limits(check_pixel_shape(tensor), asked.samples, settings)
    X = torch.from_numpy(read_pixels(tensor, binary))
    head: dict[str, Any] = {"model_name": served.name, "model_version": served.version}
    if body.id is not None:
        head["id"] = body.id
    if asked.samples is not None:
        head["parameters"] = {"mc_samples": asked.samples}
        if asked.seed is not None:
            head["parameters"]["seed"] = asked.seed
    return Call(X, asked, head)


# Inference runs in the batcher's runner (service/inference/), never on the event loop.
@v2_models.post("/{model}/infer", responses=INFER_ERRORS)
@v2_models.post("/{model}/versions/{version}/infer", responses=INFER_ERRORS, openapi_extra=VERSION)
async def infer(
    served: ModelDep, registry: RegistryDep, request: Request, batcher: BatcherDep
) -> Response:
    """Eval mode, or MC dropout with the parameter mc_samples; JSON or binary tensors."""
    call = parse_call(await read_body(request), request, served, registry.settings)
    release_body(request.state)  # only the pixels wait for the engine
    outputs = await run(served, call.X, call.plan, batcher)
    content, header_length = encode_response(call.head, outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
