"""One websocket connection = one pipeline, cancelled when the client hangs up."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from loguru import logger
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

from ..pipeline.builder import AUDIO_IN_RATE, AUDIO_OUT_RATE, build_voice_pipeline
from ..pipeline.models import SharedModels
from ..serving.limits import token_ok
from .serializer import SafeProtobufSerializer
from .settings import ServerSettings


@dataclass
class SessionInfo:
    """What ``/health`` tells about a live session."""

    id: str
    client: str
    started: float = field(default_factory=time.time)
    worker: Any = None


class SessionRegistry:
    """Live sessions of this process, for ``/health``, limits and shutdown."""

    def __init__(self) -> None:
        self.live: dict[str, SessionInfo] = {}
        self.total = 0
        self.failed = 0
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        """Short, unique, log-friendly session id."""
        return f"{next(self._ids)}-{uuid.uuid4().hex[:6]}"

    def summary(self) -> dict[str, Any]:
        """Counts for ``/health``."""
        return {"active": len(self.live), "total": self.total, "failed": self.failed}

    async def cancel_all(self, reason: str) -> None:
        """Cancel every live pipeline (server shutdown)."""
        for info in list(self.live.values()):
            if info.worker is not None:
                await info.worker.cancel(reason=reason)


def make_transport(websocket: WebSocket) -> FastAPIWebsocketTransport:
    """Pipecat's FastAPI websocket transport: protobuf, 16 kHz in, 24 kHz out."""
    return FastAPIWebsocketTransport(
        websocket,
        FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=AUDIO_IN_RATE,
            audio_out_sample_rate=AUDIO_OUT_RATE,
            add_wav_header=False,
            serializer=SafeProtobufSerializer(),
        ),
    )


async def run_session(
    websocket: WebSocket,
    settings: ServerSettings,
    models: SharedModels | None,
    registry: SessionRegistry,
    tts_factory: Any = None,
) -> None:
    """Accept the socket, run its pipeline until either side ends, clean up."""
    client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
    token = settings.serving.token
    if token and not token_ok(
        token, websocket.headers.get("authorization"), websocket.scope.get("query_string", b"")
    ):
        # Refused before the handshake completes: no session, no pipeline, no models touched.
        logger.warning(f"refused {client}: missing or wrong bearer token")
        await websocket.close(code=1008, reason="a valid bearer token is required")
        return
    if settings.max_sessions and len(registry.live) >= settings.max_sessions:
        await websocket.close(code=1013, reason="server busy: too many sessions")
        logger.warning(f"refused {client}: {len(registry.live)} sessions already")
        return
    session_id = registry.new_id()
    with logger.contextualize(session=session_id):
        await websocket.accept()
        try:
            transport = make_transport(websocket)
        except ValueError as exc:  # origin not allowed
            logger.warning(f"rejected {client}: {exc}")
            await websocket.close(code=1008, reason=str(exc))
            return
        info = SessionInfo(session_id, client)
        registry.live[session_id] = info
        registry.total += 1
        started = time.monotonic()
        logger.info(f"session started for {client} ({len(registry.live)} live)")
        try:
            if settings.pipeline == "stock":
                from ..pipeline.stock import build_stock_pipeline

                worker = await asyncio.to_thread(build_stock_pipeline, transport, settings.bot)
            else:
                if models is None:
                    raise RuntimeError("models are not loaded")
                bot = build_voice_pipeline(transport, settings.bot, models, tts_factory=tts_factory)
                worker = bot.worker
            info.worker = worker

            @transport.event_handler("on_client_disconnected")
            async def _on_disconnected(_transport: Any, _ws: Any) -> None:
                logger.info(f"client {client} hung up: cancelling its pipeline")
                await worker.cancel(reason="client disconnected")

            if settings.bot.greeting and settings.pipeline != "stock":
                await bot.greet(settings.bot.greeting)
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            registry.failed += 1
            logger.exception(f"session failed: {exc!r}")
            try:
                await websocket.close(code=1011, reason="internal error")
            except Exception:
                pass
        finally:
            registry.live.pop(session_id, None)
            logger.info(
                f"session ended after {time.monotonic() - started:.1f}s ({len(registry.live)} live)"
            )
