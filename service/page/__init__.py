"""The web page at / and its files at /static (service/page/static/, docs/web.md)."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
page = APIRouter()


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


@page.get("/", include_in_schema=False)
def index() -> FileResponse:
    html = STATIC / "index.html"
    if not html.is_file():
        raise HTTPException(404, "the web page is not installed (service/page/static/)")
    return FileResponse(html, headers=PAGE_HEADERS)
