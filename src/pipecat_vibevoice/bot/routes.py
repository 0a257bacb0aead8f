"""The bot's own routes: the browser client, the voice websocket and health."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response

from ..serving import serving_health
from .session import run_session

STATIC_FILES = (
    "index.html",
    "client.js",
    "protocol.js",
    "playback-meter.js",
    "audio-worklets.js",
    "style.css",
)
_MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def static_dir() -> Any:
    """Directory of the browser client (package data)."""
    return resources.files("pipecat_vibevoice.bot").joinpath("static")


def bot_router() -> APIRouter:
    """``GET /``, ``GET /static/<file>``, ``GET /health`` and ``WS /ws``."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(str(static_dir().joinpath("index.html")), media_type="text/html")

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return JSONResponse({"error": f"no such file: {name}"}, status_code=404)
        suffix = name[name.rfind(".") :]
        return FileResponse(str(static_dir().joinpath(name)), media_type=_MEDIA[suffix])

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        state = request.app.state
        settings = state.settings
        body: dict[str, Any] = {
            "status": "ok",
            "pipeline": settings.pipeline,
            "sessions": state.sessions.summary(),
            # Whether a new conversation would be admitted now, and why not.
            "load": state.sessions.admission.report(len(state.sessions.live))
            if state.sessions.admission is not None
            else None,
            "llm": "offline responder"
            if settings.bot.uses_offline_responder
            else {"url": settings.bot.llm_url, "model": settings.bot.llm_model},
        }
        serving = serving_health(state)
        if serving is not None:
            body["serving"] = serving  # TTS API: its sessions, cache and store
        if state.models is not None:
            models = await state.models.health()
            body["models"] = models
            body["engine"] = models["tts"]
            if state.models.remote_tts is not None:
                # Which TTS: the remote server(s), and whether one answers.
                body["tts"] = {"kind": "remote", "reachable": models["tts"]["reachable"]}
                if not models["tts"]["reachable"]:
                    body["status"] = "degraded"
            else:
                body["tts"] = {"kind": "engine", "engine": models["tts"].get("engine")}
                if models["tts"].get("status") not in ("ok", "degraded"):
                    body["status"] = "starting"
        elif settings.pipeline == "vibevoice":
            body["status"] = "starting"
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @router.websocket("/ws")
    async def voice(websocket: WebSocket) -> None:
        state = websocket.app.state
        await run_session(
            websocket, state.settings, state.models, state.sessions, state.tts_factory, state.access
        )

    return router
