"""Admin routes: reload the configured model path, behind their own token (and the API key,
when one is set)."""

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel

from service.api.deps import KeyedRoute, RegistryDep
from service.registry import LoadReport, Registry


class ReloadAnswer(BaseModel):
    loaded: list[str]
    unchanged: list[str]
    refused: dict[str, str]
    removed: list[str]
    versions: dict[str, str]  # what serves now


def require_admin(
    registry: RegistryDep, x_admin_token: Annotated[str | None, Header()] = None
) -> Registry:
    token = registry.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin routes are off: set MCDROPOUT_ADMIN_TOKEN to turn them on")
    # compare_digest takes as long for a near miss as for a wild guess.
    if x_admin_token is None or not hmac.compare_digest(
        x_admin_token.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(401, "missing or invalid X-Admin-Token")
    return registry


admin = APIRouter(prefix="/admin", tags=["admin"], route_class=KeyedRoute)
ADMIN_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing or invalid token"},
    403: {"description": "Admin routes are off"},
}


# A plain `def`: loading reads and verifies files, off the event loop.
@admin.post("/reload", responses=ADMIN_ERRORS)
def reload(registry: Annotated[Registry, Depends(require_admin)]) -> ReloadAnswer:
    """Reload the configured model path; a checkpoint that fails verification is refused."""
    report: LoadReport = registry.load()
    versions = {name: served.version for name, served in registry.models.items()}
    return ReloadAnswer(
        loaded=report.loaded,
        unchanged=report.unchanged,
        refused=report.refused,
        removed=report.removed,
        versions=versions,
    )
