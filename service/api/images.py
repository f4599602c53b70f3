"""The image routes: an upload converted to Fashion-MNIST's form by service/inputs/image.py,
answered as the JSON routes answer those pixels (docs/web.md)."""

import asyncio
import re
from typing import Annotated, Any

import torch
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from models.engine import MAX_SEED
from service.api.deps import KeyedRoute, ModelCallDep
from service.api.schemas import ErrorDetail, UncertaintyResponse
from service.api.v1 import ERRORS, answer_uncertainty, check_samples, invalid, within_limits
from service.inputs.image import FORMATS, Converted, ImageError, convert
from service.inputs.pixels import FEATURES
from service.settings import Settings


class ImagePixels(BaseModel):
    pixels: list[float] = Field(
        min_length=FEATURES,
        max_length=FEATURES,
        description="what the model sees: 784 values in [0, 1], row-major, as the JSON routes take",
    )
    width: int = Field(description="of the upload, after its EXIF orientation")
    height: int
    format: str
    inverted: bool = Field(description="the background was light, so the shades were inverted")


IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorDetail, "description": "A body that is not valid multipart/form-data"},
    413: {
        "model": ErrorDetail,
        "description": "Body, file bytes or image pixels over the limits, or 1 x samples over "
        "the instances x samples limit",
    },
}


def form_integer(value: Any) -> Any:
    """A form's integer is decimal digits, maybe after a minus: pydantic would also read "100.0",
    "+100", " 100" or "1_000"."""
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
        raise ValueError("Input should be a valid integer: decimal digits only")
    return value


# Images decoded at once: one at the pixel limit takes a large share of the server's memory
# (docs/web.md), so more uploads wait for their turn rather than multiply it.
DECODERS = 2


async def _convert(file: UploadFile, settings: Settings, decoding: asyncio.Semaphore) -> Converted:
    limit = settings.max_image_bytes
    if file.size is not None and file.size > limit:
        raise HTTPException(413, f"file: {file.size} bytes, over the limit of {limit}")
    data = await file.read(limit + 1)
    try:
        async with decoding:  # CPU work: off the event loop, DECODERS at a time
            return await run_in_threadpool(
                convert,
                data,
                max_bytes=limit,
                max_pixels=settings.max_image_pixels,
                max_side=settings.max_image_side,
            )
    except ImageError as e:
        if e.too_large:
            raise HTTPException(413, f"file: {e}") from None
        raise invalid(["file"], f"file: {e}") from None


def image_routes(settings: Settings) -> APIRouter:
    """The image routes; the form's limits come from the settings, so that the OpenAPI schema
    states them."""
    router = APIRouter(prefix="/v1/models", tags=["v1"], route_class=KeyedRoute)
    decoding = asyncio.Semaphore(DECODERS)
    upload = (
        f"An image: {', '.join(FORMATS)}; at most {settings.max_image_bytes} bytes, "
        f"{settings.max_image_pixels} pixels and {settings.max_image_side} pixels a side. "
        "Converted as docs/web.md says."
    )
    Upload = Annotated[UploadFile, File(description=upload)]
    # A form field has no null: leaving it out is how to say "none" (the schema says so).
    n = {"type": "integer", "minimum": 1, "maximum": settings.max_samples}
    Samples = Annotated[
        int | None,
        Form(ge=1, le=settings.max_samples),
        BeforeValidator(form_integer),
        WithJsonSchema(n | {"description": "stochastic passes N; default per model"}),
    ]
    seed = {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
    Seed = Annotated[
        int | None,
        Form(ge=0, le=MAX_SEED),
        BeforeValidator(form_integer),
        WithJsonSchema(seed | {"description": "makes the answer reproducible"}),
    ]

    @router.post("/{model}/preprocess/image", responses=IMAGE_ERRORS)
    async def preprocess_image(
        file: Upload,
        call: ModelCallDep,  # 404 for an unknown model, 503 until ready: as the other routes
    ) -> ImagePixels:
        """The 784 pixels an image becomes: what the image routes give the model."""
        converted = await _convert(file, call.settings, decoding)
        return ImagePixels(
            pixels=converted.pixels[0].tolist(),
            width=converted.width,
            height=converted.height,
            format=converted.format,
            inverted=converted.inverted,
        )

    @router.post("/{model}/uncertainty/image", responses=IMAGE_ERRORS)
    async def uncertainty_image(
        file: Upload,
        call: ModelCallDep,
        samples: Samples = None,
        seed: Seed = None,
    ) -> UncertaintyResponse:
        """MC dropout for an uploaded image: the JSON route's answer for its 784 pixels."""
        n = check_samples(samples, call.served, call.settings)
        within_limits(1, n, call.settings)
        converted = await _convert(file, call.settings, decoding)
        X = torch.from_numpy(converted.pixels)
        return await answer_uncertainty(call.served, X, n, seed, call.metrics, call.batcher)

    return router
