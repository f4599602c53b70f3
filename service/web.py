"""The web page at / (service/static/, docs/web.md) and the image routes: an upload converted to
Fashion-MNIST's form by service/image.py, answered as the JSON routes answer those pixels."""

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from service.image import FORMATS, Converted, ImageError, convert
from service.pixels import FEATURES
from service.routes import (
    ERRORS,
    ModelCallDep,
    answer_uncertainty,
    check_limits,
    check_samples,
    invalid,
)
from service.schemas import MAX_SEED, ErrorDetail, UncertaintyResponse
from service.settings import Settings

STATIC = Path(__file__).parent / "static"


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
        "description": "Body, file bytes, image pixels or samples over the limits",
    },
}


# The page and its files (it takes an API key): only its own scripts, styles and requests, no
# inline code, never in a frame, its address never sent elsewhere, types as declared.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class PageFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def static_files() -> StaticFiles:
    """The page's scripts, styles and example images, mounted at /static. Without them (a
    package built without its data files) the API still serves; the page is 404."""
    return PageFiles(directory=STATIC, check_dir=False)


def form_integer(value: Any) -> Any:
    """A form's integer is decimal digits, maybe after a minus: pydantic would also read "100.0",
    "+100", " 100" or "1_000"."""
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
        raise ValueError("Input should be a valid integer: decimal digits only")
    return value


# Images decoded at once: each may take up to about 130 MB at the pixel limit (a 4096^2 RGBA
# PNG), so more uploads wait for their turn rather than multiply the server's memory.
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


def web_routes(settings: Settings) -> APIRouter:
    """The page and the image routes; the form's limits come from the settings, so that the
    OpenAPI schema states them."""
    router = APIRouter()
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

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        index = STATIC / "index.html"
        if not index.is_file():
            raise HTTPException(404, "the web page is not installed (service/static/)")
        return FileResponse(index, headers=PAGE_HEADERS)

    @router.post("/v1/models/{model}/preprocess/image", tags=["v1"], responses=IMAGE_ERRORS)
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

    @router.post("/v1/models/{model}/uncertainty/image", tags=["v1"], responses=IMAGE_ERRORS)
    async def uncertainty_image(
        file: Upload,
        call: ModelCallDep,
        samples: Samples = None,
        seed: Seed = None,
    ) -> UncertaintyResponse:
        """MC dropout for an uploaded image: the JSON route's answer for its 784 pixels."""
        n = check_samples(samples, call.served, call.settings)
        check_limits(1, n, call.settings)
        converted = await _convert(file, call.settings, decoding)
        X = torch.from_numpy(converted.pixels)
        return await answer_uncertainty(call.served, X, n, seed, call.metrics, call.batcher)

    return router
