"""The FastAPI app factory: ``GET /``, ``WS /ws``, ``GET /health`` on one port.

Extending it: add a router factory to :data:`ROUTER_FACTORIES` (or pass
``extra_routers``). Routers reach the process-wide state through ``request.app.state``
(or ``websocket.app.state``):

* ``state.settings`` — :class:`~.settings.ServerSettings`
* ``state.models`` — :class:`~pipecat_vibevoice.pipeline.SharedModels` (TTS engine,
  Whisper transcriber, Silero and smart-turn sessions), loaded once at start-up
* ``state.engine`` — the TTS engine (same as ``state.models.tts``)
* ``state.sessions`` — :class:`~.session.SessionRegistry`, with the server's
  :class:`~pipecat_vibevoice.server_load.Admission` (``state.sessions.admission``)
* ``state.load`` — the :class:`~pipecat_vibevoice.server_load.LoadMonitor` it admits by
* ``state.access`` — the :class:`~pipecat_vibevoice.web_access.AccessPolicy` every socket
  of the app follows (origins, token)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from loguru import logger

from ..pipeline.models import SharedModels, load_shared_models
from ..server_load import Admission, LoadMonitor, register_load_metrics
from ..serving import create_tts_router
from ..web_access import AccessPolicy
from .routes import bot_router
from .sdk_page import sdk_router
from .session import SessionRegistry
from .settings import ServerSettings
from .telephony import telephony_router

#: Final transcripts taking longer than this (queue + decoding, last 10 s) mean the
#: conversations already here wait too long for their answers: admit no more.
STT_LATENCY_LIMIT_S = 0.8

#: Every router of the app, in one place. Each entry is a zero-argument factory.
ROUTER_FACTORIES: list[Callable[[], APIRouter]] = [bot_router, telephony_router, sdk_router]


def create_app(
    settings: ServerSettings | None = None,
    *,
    models: SharedModels | None = None,
    extra_routers: Sequence[APIRouter] = (),
    tts_factory: Any = None,
) -> FastAPI:
    """Build the app; models load in the lifespan (or pass preloaded ``models``).

    Args:
        settings: Server, conversation and engine settings (defaults if omitted).
        models: Already loaded shared models (tests share one set across apps).
        extra_routers: More routers to include after :data:`ROUTER_FACTORIES`.
        tts_factory: Override of the pipeline's TTS processor factory (tests).

    """
    settings = settings or ServerSettings()
    # A remote TTS server: no engine here, and no /v1/tts/stream of our own.
    remote_urls = [u.strip() for u in settings.tts_url.split(",") if u.strip()]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = False
        if app.state.models is None and settings.pipeline == "vibevoice":
            app.state.models = await load_shared_models(
                settings.bot,
                settings.tts,
                remote_tts_urls=remote_urls,
                remote_tts_token=settings.serving.token,
            )
            owned = True
        if app.state.models is not None:
            app.state.engine = app.state.models.tts
            # Fail at start, not at the first call, on a voice that does not exist
            # (a remote server checks its voices itself).
            if app.state.models.tts is not None:
                app.state.models.tts.resolve_voice(settings.bot.voice)
        await app.state.load.start()
        if app.state.models is not None:
            # Speech recognition behind = conversations waiting for their answers.
            transcriber = app.state.models.transcriber
            app.state.load.probes["stt_latency_s"] = transcriber.final_latency
            transcriber.has_slack = app.state.load.has_slack
        logger.info(
            f"voice bot ready on http://{settings.host}:{settings.port} "
            f"(pipeline={settings.pipeline}, "
            f"llm={'offline responder' if settings.bot.uses_offline_responder else settings.bot.llm_url})"
        )
        try:
            yield
        finally:
            await app.state.load.stop()
            await app.state.sessions.cancel_all("server shutting down")
            if owned:
                await app.state.models.close()

    app = FastAPI(title="pipecat-vibevoice voice bot", lifespan=lifespan)
    app.state.settings = settings
    app.state.models = models
    app.state.engine = models.tts if models is not None else None
    app.state.load = LoadMonitor()
    app.state.sessions = SessionRegistry(
        Admission(
            app.state.load,
            budget_share=settings.load_budget,
            prior_session_cores=settings.session_cost_cores,
            max_sessions=settings.max_sessions,
            max_probe={"stt_latency_s": STT_LATENCY_LIMIT_S},
            enabled=settings.admission == "load",
        )
    )
    app.state.tts_factory = tts_factory
    app.state.access = AccessPolicy.from_settings(settings.allowed_origins, settings.serving.token)
    for factory in ROUTER_FACTORIES:
        app.include_router(factory())
    # The TTS API for apps that only need speech, on the same engine (docs/serving.md).
    if not remote_urls:
        tts_router = create_tts_router(
            settings.serving,
            tts_config=settings.tts,
            access=app.state.access,
            warm=settings.pipeline == "vibevoice",
        )
        app.include_router(tts_router)
        metrics_registry = tts_router.serving_state.metrics.registry
    else:  # no TTS API here: the load metrics get a /metrics of their own
        metrics_registry = metrics_router_registry(app)
    register_load_metrics(
        metrics_registry, app.state.sessions.admission, lambda: len(app.state.sessions.live)
    )
    for router in extra_routers:
        app.include_router(router)
    return app


def metrics_router_registry(app: FastAPI) -> Any:
    """A private Prometheus registry served at ``GET /metrics`` of ``app``."""
    from fastapi import Response
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=True)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
