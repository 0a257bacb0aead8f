"""One websocket connection = one pipeline, cancelled when the client hangs up.

A browser or Python client at ``/ws`` and a phone call at ``/telephony/twilio``
(:mod:`.telephony`) differ only in their serializer and their first messages; what they
share lives here, so both follow one rule: :func:`admit` (access policy, then the
server's :class:`~pipecat_vibevoice.server_load.Admission`: measured load and
``max_sessions``), :func:`tracked_session` (the registry behind ``/health``, the session
id on every log line) and :func:`run_pipeline` (build, run, cancel on hang-up, count
failures).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from loguru import logger
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

from ..pipeline.builder import AUDIO_IN_RATE, AUDIO_OUT_RATE, build_voice_pipeline
from ..pipeline.models import SharedModels
from ..server_load import Admission, Refusal
from ..web_access import AccessPolicy
from .serializer import SafeProtobufSerializer
from .settings import ServerSettings
from .transport import VoiceBotTransport


@dataclass
class SessionInfo:
    """What ``/health`` tells about a live session."""

    id: str
    client: str
    started: float = field(default_factory=time.time)
    worker: Any = None


#: Close code for "server busy, try again later" (RFC 6455 1013).
CLOSE_TRY_LATER = 1013

#: What a refused client is told before the close, in its own wire format (None: nothing).
BusyNotice = Callable[[str], Awaitable[bytes | str | None]]


class SessionRegistry:
    """Live sessions of this process, for ``/health``, admission and shutdown.

    ``admission`` decides whether a new session may start (measured load and the
    session cap); without one only ``ServerSettings.max_sessions`` limits.
    """

    def __init__(self, admission: Admission | None = None) -> None:
        self.admission = admission
        self.live: dict[str, SessionInfo] = {}
        self.total = 0
        self.failed = 0
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        """Short, unique, log-friendly session id."""
        return f"{next(self._ids)}-{uuid.uuid4().hex[:6]}"

    def summary(self) -> dict[str, Any]:
        """Counts for ``/health``."""
        return {
            "active": len(self.live),
            "total": self.total,
            "failed": self.failed,
            "refused": sum(self.admission.refused.values()) if self.admission else 0,
        }

    def note_live(self) -> None:
        """Tell the admission how many sessions are live (it learns their cost by it)."""
        if self.admission is not None:
            self.admission.note_sessions(len(self.live))

    def refusal(self, max_sessions: int = 0) -> Refusal | None:
        """Why a new session may not start now, or None."""
        if self.admission is not None:
            return self.admission.check(len(self.live))
        if max_sessions and len(self.live) >= max_sessions:
            return Refusal("session limit", f"server busy: {len(self.live)} sessions is the limit")
        return None

    async def cancel_all(self, reason: str) -> None:
        """Cancel every live pipeline (server shutdown)."""
        for info in list(self.live.values()):
            if info.worker is not None:
                await info.worker.cancel(reason=reason)


def make_transport(
    websocket: WebSocket, stock: bool = False, serializer: FrameSerializer | None = None
) -> FastAPIWebsocketTransport:
    """The websocket transport of one session: 16 kHz in, 24 kHz out.

    Ours holds its output at the first sign of a barge-in (:mod:`.transport`);
    ``stock`` is Pipecat's own, for the stock peer pipeline.
    ``serializer`` is the wire format: protobuf frames by default, a carrier's own
    (e.g. Twilio's 8 kHz μ-law, resampled by the serializer) for phone calls.
    """
    kind = FastAPIWebsocketTransport if stock else VoiceBotTransport
    return kind(
        websocket,
        FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=AUDIO_IN_RATE,
            audio_out_sample_rate=AUDIO_OUT_RATE,
            add_wav_header=False,
            serializer=serializer or SafeProtobufSerializer(),
            # Origins were checked by the server's AccessPolicy before the handshake
            # (one rule for every socket); Pipecat's own check would refuse clients that
            # send no Origin as soon as PIPECAT_ALLOWED_ORIGINS is set.
            allowed_origins=[],
        ),
    )


async def admit(
    websocket: WebSocket,
    settings: ServerSettings,
    registry: SessionRegistry,
    access: AccessPolicy,
    busy_notice: BusyNotice | None = None,
) -> bool:
    """Whether a socket may open a session; if not, it is closed here.

    One rule for every socket of the bot: the access policy (origins, token) refuses
    before the handshake (HTTP 403); then the registry's admission (measured load,
    ``max_sessions``) over every live session, web or phone. A busy server accepts the
    socket only to say so: ``busy_notice``'s message (an RTVI ``error`` on ``/ws``),
    then close code 1013 ("try again later") with the reason — at once, so a caller is
    never admitted to wait in silence.
    """
    client = client_name(websocket)
    refusal = access.check(websocket.headers, websocket.scope.get("query_string", b""))
    if refusal is not None:
        # Refused before the handshake completes (HTTP 403): no session, no pipeline.
        logger.warning(f"refused {client}: {refusal.message}")
        await websocket.close(code=1008, reason=refusal.message[:120])
        return False
    busy = registry.refusal(settings.max_sessions)
    if busy is None:
        return True
    logger.warning(f"refused {client} ({busy.reason}): {busy.message}")
    try:
        await websocket.accept()
        notice = await busy_notice(busy.message) if busy_notice is not None else None
        if isinstance(notice, bytes):
            await websocket.send_bytes(notice)
        elif isinstance(notice, str):
            await websocket.send_text(notice)
        await websocket.close(code=CLOSE_TRY_LATER, reason=busy.message[:120])
    except Exception as exc:  # the caller left first
        logger.debug(f"{client} left before its refusal: {exc!r}")
    return False


async def protobuf_busy_notice(message: str) -> bytes | str | None:
    """The refusal as a fatal RTVI ``error`` in Pipecat's protobuf frames (``/ws``)."""
    from pipecat.frames.frames import OutputTransportMessageUrgentFrame

    from ..pipeline.frames import client_error

    return await SafeProtobufSerializer().serialize(
        OutputTransportMessageUrgentFrame(message=client_error(message, fatal=True))
    )


def client_name(websocket: WebSocket) -> str:
    """``host:port`` of the peer, for logs and ``/health``."""
    return f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"


@contextmanager
def tracked_session(registry: SessionRegistry, client: str) -> Iterator[SessionInfo]:
    """A live session in the registry for as long as the block runs.

    Every log line inside carries the session id (loguru ``contextualize``, so tasks
    started inside inherit it), and the session counts against ``max_sessions`` from
    the first line on, even while a call is still reading its first messages.
    """
    session_id = registry.new_id()
    with logger.contextualize(session=session_id):
        info = SessionInfo(session_id, client)
        registry.live[session_id] = info
        registry.note_live()
        registry.total += 1
        started = time.monotonic()
        logger.info(f"session started for {client} ({len(registry.live)} live)")
        try:
            yield info
        finally:
            registry.live.pop(session_id, None)
            registry.note_live()
            logger.info(
                f"session ended after {time.monotonic() - started:.1f}s ({len(registry.live)} live)"
            )


async def run_pipeline(
    websocket: WebSocket,
    transport: FastAPIWebsocketTransport,
    info: SessionInfo,
    settings: ServerSettings,
    models: SharedModels | None,
    registry: SessionRegistry,
    tts_factory: Any = None,
) -> None:
    """Build the session's pipeline on ``transport`` and run it until either side ends.

    The peer hanging up (the socket closing) cancels the pipeline at once, so no model
    keeps working for nobody. A failure is logged and counted and closes the socket
    with 1011; it never reaches the server.
    """
    try:
        bot = None
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
            logger.info(f"client {info.client} hung up: cancelling its pipeline")
            await worker.cancel(reason="client disconnected")

        if settings.bot.greeting and bot is not None:
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


async def run_session(
    websocket: WebSocket,
    settings: ServerSettings,
    models: SharedModels | None,
    registry: SessionRegistry,
    tts_factory: Any = None,
    access: AccessPolicy | None = None,
) -> None:
    """Accept the socket, run its pipeline until either side ends, clean up."""
    access = access or AccessPolicy.from_settings(settings.allowed_origins, settings.serving.token)
    if not await admit(websocket, settings, registry, access, protobuf_busy_notice):
        return
    with tracked_session(registry, client_name(websocket)) as info:
        await websocket.accept()
        transport = make_transport(websocket, stock=settings.pipeline == "stock")
        await run_pipeline(websocket, transport, info, settings, models, registry, tts_factory)
