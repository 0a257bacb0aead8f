"""The serving routes: ``WS /v1/tts/stream`` and ``GET /metrics``.

:func:`create_tts_router` returns an ``APIRouter`` with its own lifespan (store
opened, engine warmed, store flushed at shutdown); FastAPI merges router lifespans
into the app's, so including the router is all a host app has to do. The
:class:`~.state.ServingState` is kept on ``app.state.serving_state`` for ``/health``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Response, WebSocket
from loguru import logger

from ..engine import TTSConfig, TTSEngine
from ..web_access import AccessPolicy
from .connection import TTSConnection
from .metrics import CONTENT_TYPE
from .protocol import event
from .settings import ServingSettings
from .state import ServingState

#: Close codes: policy violation (auth, origin) and "try again later" (busy).
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013


def create_tts_router(
    settings: ServingSettings | None = None,
    *,
    tts_config: TTSConfig | None = None,
    engine: TTSEngine | None = None,
    access: AccessPolicy | None = None,
    warm: bool = True,
) -> APIRouter:
    """Routes of the TTS service, sharing one engine with the host app.

    Args:
        settings: Limits, security, cache and store (``ServingSettings.from_env()`` if omitted).
        tts_config: Engine config when no engine is running yet (else the app's
            ``state.settings.tts``, else the environment).
        engine: An engine to use instead of the process-wide one (tests, embedding).
        access: Who may connect (origins, token); the host app's policy, so every socket
            of one server follows one rule (``web_access``). Default: same-host browser
            pages, non-browser clients, and ``settings.token``.
        warm: Load the engine at start-up rather than on the first connection.

    """
    settings = settings or ServingSettings.from_env()
    state = ServingState(settings, tts_config, engine, access)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.serving_state = state
        await state.start(app.state, warm=warm)
        try:
            yield
        finally:
            await state.close()

    router = APIRouter(lifespan=lifespan)
    router.serving_state = state  # type: ignore[attr-defined]  # for tests and health

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @router.websocket("/v1/tts/stream")
    async def stream(websocket: WebSocket) -> None:
        await serve_connection(websocket, state)

    return router


async def _refuse(
    websocket: WebSocket, state: ServingState, reason: str, message: str, code: int
) -> None:
    """Accept, say why in an ``error`` event, close: a browser sees the reason too."""
    state.metrics.errors.labels(reason).inc()
    logger.info(f"TTS socket refused ({reason}) from {websocket.client}")
    await websocket.accept()
    try:
        await websocket.send_text(event("error", reason=reason, message=message))
        await websocket.close(code, reason)
    except Exception:  # the client left first
        pass


async def serve_connection(websocket: WebSocket, state: ServingState) -> None:
    """Check access and capacity, then run a :class:`~.connection.TTSConnection`."""
    settings = state.settings
    refusal = state.access.check(websocket.headers, websocket.scope.get("query_string", b""))
    if refusal is not None:
        await _refuse(websocket, state, refusal.reason, refusal.message, CLOSE_POLICY)
        return
    if not state.connections.try_acquire():
        await _refuse(
            websocket,
            state,
            "busy",
            f"the server is at its limit of {settings.max_connections} connections; retry shortly",
            CLOSE_TRY_LATER,
        )
        return
    state.metrics.active_sessions.inc()
    try:
        try:
            engine = await state.engine(websocket.app.state)
        except Exception as exc:
            await _refuse(websocket, state, "engine_unavailable", f"TTS engine failed: {exc}", 1011)
            return
        await websocket.accept()
        connection = TTSConnection(websocket, state, engine)
        connection.log.info(f"TTS session opened from {websocket.client}")
        try:
            await connection.run()
        except Exception as exc:  # ClientGone during the greeting, or a bug: never the server
            connection.log.info(f"TTS session ended: {exc!r}")
        finally:
            connection.log.info("TTS session closed")
    finally:
        state.connections.release()
        state.metrics.active_sessions.dec()


def serving_health(app_state: Any) -> dict[str, Any] | None:
    """The serving part of ``/health`` (None when the app has no TTS router)."""
    state = getattr(app_state, "serving_state", None)
    return state.health() if isinstance(state, ServingState) else None
