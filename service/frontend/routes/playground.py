"""The playground: `GET /` serves a page to try the models in a browser; its assets are under
`/playground/`. Plain files shipped in the package, no build step, nothing fetched from elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
ASSETS_PATH = "/playground"
# The page talks only to this server: a browser refuses any script, style or request elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["playground"])


@router.get("/", response_class=HTMLResponse)  # listed, so that GET / is a documented method of "/"
async def playground() -> FileResponse:
    """The playground page (`POST /` is TGI's generation route)."""
    return FileResponse(PLAYGROUND_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


class RevalidatedFiles(StaticFiles):
    """The page's assets, revalidated on every load like the page itself (by ETag: cheap), so a
    browser never runs old modules under a new page after an upgrade."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install(app: FastAPI) -> None:
    """Add the page and its assets to the app."""
    app.include_router(router)
    app.mount(ASSETS_PATH, RevalidatedFiles(directory=PLAYGROUND_DIR), name="playground")
