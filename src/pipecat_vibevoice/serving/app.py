"""A TTS-only server: ``WS /v1/tts/stream``, ``GET /metrics`` and ``GET /health``.

This is the GPU-host deployment (the engine behind a websocket for bots and apps that
only need speech), and what the serving tests run against. The voice bot's app
(:mod:`pipecat_vibevoice.bot.app`) includes the same router next to its own
routes, so one process can serve both on one port.

Run::

    python -m pipecat_vibevoice.serving --host 0.0.0.0 --port 8000 --engine piper
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..engine import TTSConfig, TTSEngine
from ..settings_base import EnvSettings
from ..web_access import AccessPolicy
from .router import create_tts_router, serving_health
from .settings import ServingSettings


@dataclass
class TTSServerSettings(EnvSettings):
    """Where the standalone TTS server listens (``PIPECAT_VIBEVOICE_SERVING_HOST`` etc.)."""

    ENV_PREFIX: ClassVar[str] = "PIPECAT_VIBEVOICE_SERVING_"
    GROUP: ClassVar[str] = "server"

    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = field(
        default="INFO", metadata={"help": "log level"}
    )
    allowed_origins: str = field(
        default="",
        metadata={
            "help": "browser origins allowed beyond this server's own, comma-separated "
            "('*' = any; clients that send no Origin are not browsers and always pass)"
        },
    )


#: Websocket options of every server of this project (the bot and the TTS server).
#: Pings find dead peers within 40 s. No per-message compression: the payload is PCM
#: audio, which deflate barely shrinks, and compressing it took a visible share of the
#: event loop that moves every conversation's audio (py-spy, 6 conversations).
UVICORN_SOCKET_OPTIONS: dict[str, object] = {
    "ws_ping_interval": 20,
    "ws_ping_timeout": 20,
    "ws_per_message_deflate": False,
}


def create_app(
    settings: ServingSettings | None = None,
    tts_config: TTSConfig | None = None,
    *,
    engine: TTSEngine | None = None,
    allowed_origins: str = "",
    pool_health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The standalone TTS app; the engine loads (or is adopted) at start-up.

    ``pool_health``: for a server that is one replica of a pool (the Ray Serve
    deployment), what the pool looks like, added to ``/health`` as ``pool``; a pool
    whose ``status`` is not ``ok`` makes an otherwise healthy answer ``degraded``
    (still 200: this replica can speak). A single server passes nothing and its
    ``/health`` is unchanged.
    """
    settings = settings or ServingSettings.from_env()
    access = AccessPolicy.from_settings(allowed_origins, settings.token)
    router = create_tts_router(settings, tts_config=tts_config, engine=engine, access=access)
    app = FastAPI(title="pipecat-vibevoice TTS", lifespan=None)
    app.include_router(router)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state = router.serving_state  # type: ignore[attr-defined]
        body: dict[str, Any] = {"status": "starting", "serving": serving_health(request.app.state)}
        engine = state.loaded_engine
        if engine is not None:
            engine_health = await engine.health_check()
            body["engine"] = engine_health
            if engine_health.get("status") in ("ok", "degraded"):
                body["status"] = "ok"
        store = (body["serving"] or {}).get("store", {})
        if body["status"] == "ok" and store.get("status") == "failing":
            body["status"] = "degraded"  # audio flows, rows are being lost
        if pool_health is not None:
            try:
                body["pool"] = await pool_health()
            except Exception as exc:  # the pool's view is informative; this replica answers
                body["pool"] = {"status": "unknown", "error": f"{type(exc).__name__}: {exc}"}
            if body["status"] == "ok" and body["pool"].get("status") != "ok":
                body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if body["status"] in ("ok", "degraded") else 503)

    return app


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``python -m pipecat_vibevoice.serving``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipecat_vibevoice.serving",
        description="TTS server: WS /v1/tts/stream, GET /metrics, GET /health (docs/serving.md).",
    )
    for settings in (TTSServerSettings, ServingSettings, TTSConfig):
        settings.add_cli_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted."""
    from loguru import logger

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        server = TTSServerSettings.from_args(args)
        settings = ServingSettings.from_args(args)
        tts_config = TTSConfig.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logger.remove()
    logger.configure(extra={"session": "-"})
    logger.add(sys.stderr, level=server.log_level)
    import uvicorn

    uvicorn.run(
        create_app(settings, tts_config, allowed_origins=server.allowed_origins),
        host=server.host,
        port=server.port,
        log_level="warning",
        ws_max_size=settings.max_message_bytes * 2,
        **UVICORN_SOCKET_OPTIONS,
    )
    return 0
