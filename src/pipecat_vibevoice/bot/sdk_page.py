"""``GET /sdk/``: the voice bot's page on Pipecat's official browser client SDK.

The page (``static/sdk/``) is built from ``web/sdk-client/`` with esbuild and
committed, so serving it needs no npm. It talks to ``/ws`` of the same server and
loads its audio worklets from ``/static/audio-worklets.js`` (our own page's), nothing
from anywhere else. See docs/bot.md, "The Pipecat SDK page".
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

#: The only files served under ``/sdk/``, with their media types.
SDK_FILES = {"index.html": "text/html", "sdk-client.js": "text/javascript"}


def sdk_dir() -> Any:
    """Directory of the built SDK page (package data)."""
    return resources.files("pipecat_vibevoice.bot").joinpath("static", "sdk")


def sdk_router() -> APIRouter:
    """``GET /sdk/`` (the page) and ``GET /sdk/<file>`` (its bundle)."""
    router = APIRouter()

    @router.get("/sdk", include_in_schema=False)
    async def sdk_no_slash(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/sdk/{query}", status_code=307)

    @router.get("/sdk/", include_in_schema=False)
    async def sdk_index() -> Response:
        return FileResponse(str(sdk_dir().joinpath("index.html")), media_type="text/html")

    @router.get("/sdk/{name}", include_in_schema=False)
    async def sdk_file(name: str) -> Response:
        media_type = SDK_FILES.get(name)
        if media_type is None:
            return JSONResponse({"error": f"no such file: {name}"}, status_code=404)
        return FileResponse(str(sdk_dir().joinpath(name)), media_type=media_type)

    return router
