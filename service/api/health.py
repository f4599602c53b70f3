"""The open routes for operators: liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsDep, RegistryDep
from service.api.schemas import Health
from service.edge import RETRY_AFTER

health = APIRouter(prefix="/health", tags=["health"])
operations = APIRouter(tags=["operations"])


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
