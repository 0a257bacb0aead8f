"""One ``/v1/tts/stream`` connection: greeting, receive loop, queue, player and cancel.

The receive loop validates every client frame and never dies on bad input (an ``error``
event answers it). Accepted utterances wait in a per-connection queue that one player
task plays strictly in order, each in a task of its own so ``cancel`` can stop it
mid-stream: the engine stream is closed (``aclosing``), which stops model work before
its next chunk.

What happens to one utterance is elsewhere: its text and the idle flush in
:mod:`.utterance`, cache, slot and outcome in :mod:`.playback`, its audio going out in
:mod:`.stream`, every frame through the connection's :class:`.sender.ClientSender`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from fastapi import WebSocket
from loguru import logger

from ..engine import GrowingText, TTSEngine
from .limits import TokenBucket
from .playback import UtterancePlayback
from .protocol import Append, Cancel, End, Flush, ProtocolError, Speak, new_id, parse_message
from .sender import ClientGone, ClientSender
from .state import ServingState
from .utterance import Utterance, flush_when_idle


class TTSConnection:
    """Serves one accepted websocket until it closes."""

    def __init__(self, websocket: WebSocket, state: ServingState, engine: TTSEngine) -> None:
        self.ws = websocket
        self.state = state
        self.settings = state.settings
        self.engine = engine
        #: The session id: in the ``ready`` event, every log line and every store row.
        self.id = new_id()
        self.log = logger.bind(session=self.id)
        self.send = ClientSender(websocket, self.settings.send_timeout_s, state.metrics, self.log)
        self.playback = UtterancePlayback(state, engine, self.send, self.id, self.log)
        self.queue: deque[Utterance] = deque()
        self.current: Utterance | None = None
        self.current_task: asyncio.Task[None] | None = None
        #: The utterance ``append`` adds to (``speak`` with ``final: false`` opened it).
        self.open_utterance: Utterance | None = None
        self.ending = False  # ``end`` received: play the queue, then close
        self.wake = asyncio.Event()  # the queue grew or ``end`` came
        self.bucket = TokenBucket(self.settings.rate_limit_per_s, self.settings.rate_limit_burst)

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Greet, then serve until the client leaves or ``end`` drains the queue."""
        await self.send.event(
            "ready",
            session=self.id,
            sample_rate=self.engine.config.sample_rate,
            chunk_ms=self.engine.config.chunk_ms,
            encoding="pcm_s16le",
            channels=1,
            engine=self.engine.backend.name,
            voices=list(self.engine.backend.voices()),
            limits={
                "max_message_chars": self.settings.max_message_chars,
                "max_utterance_chars": self.settings.max_utterance_chars,
                "max_queue": self.settings.max_queue,
                "rate_limit_per_s": self.settings.rate_limit_per_s,
            },
        )
        receiver = asyncio.create_task(self._receive_loop(), name=f"tts-recv-{self.id}")
        player = asyncio.create_task(self._player(), name=f"tts-play-{self.id}")
        try:
            await asyncio.wait({receiver, player}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiver, player):
                task.cancel()
            for task in (receiver, player):
                with contextlib.suppress(asyncio.CancelledError, ClientGone):
                    await task
            for utterance in self.queue:
                utterance.close()
            self.queue.clear()

    # -- receiving ----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Read frames until the client leaves; a bad frame is answered, never fatal."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.send.mark_gone("disconnected")
                return
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        """One client frame: checked, rate limited, parsed, acted on (or answered)."""
        data, text = message.get("bytes"), message.get("text")
        if data is not None and text is None:
            await self.send.error(
                "binary_not_supported", "send JSON text messages; binary frames are not accepted"
            )
            return
        if text is None:
            return
        if len(text.encode("utf-8", "surrogatepass")) > self.settings.max_message_bytes:
            await self.send.error(
                "message_too_large",
                f"messages are limited to {self.settings.max_message_bytes} bytes",
            )
            return
        limited = not self.bucket.allow()
        if limited and '"cancel"' not in text:  # a cancel always gets through
            await self._rate_limited()
            return
        try:
            msg = parse_message(text, self.settings.max_message_chars)
        except ProtocolError as exc:
            await self.send.error(exc.reason, str(exc), exc.request_id)
            return
        if limited and not isinstance(msg, Cancel):
            await self._rate_limited()
            return
        if isinstance(msg, Cancel):
            await self._cancel(msg.id)
            return
        if self.ending:
            await self.send.error("ended", "the connection was ended; no new text is accepted")
            return
        if isinstance(msg, Speak):
            await self._speak(msg)
        elif isinstance(msg, Append):
            await self._append(msg)
        elif isinstance(msg, Flush):
            self._close_open()
        elif isinstance(msg, End):
            self._close_open()
            self.ending = True
            self.wake.set()

    async def _rate_limited(self) -> None:
        await self.send.error(
            "rate_limited", f"more than {self.settings.rate_limit_per_s:g} messages per second"
        )

    def _close_open(self) -> None:
        if self.open_utterance is not None:
            self.open_utterance.close()
            self.open_utterance = None

    def _forget_open(self, utterance: Utterance) -> None:
        """``utterance`` was closed elsewhere (idle flush): appends must not reach it."""
        if self.open_utterance is utterance:
            self.open_utterance = None

    async def _enqueue(self, utterance: Utterance) -> bool:
        """Queue ``utterance`` and say so (``queued``), or refuse it (``queue_full``)."""
        if len(self.queue) >= self.settings.max_queue:
            await self.send.error(
                "queue_full", f"at most {self.settings.max_queue} items may wait", utterance.id
            )
            return False
        self.queue.append(utterance)
        self.wake.set()
        await self.send.event("queued", id=utterance.id, position=len(self.queue))
        return True

    async def _speak(self, msg: Speak) -> None:
        self._close_open()  # a new utterance completes the previous one
        utterance = Utterance(
            msg.id,
            msg.voice,
            msg.speed,
            msg.pitch,
            msg.options,
            GrowingText(msg.text, closed=msg.final),
        )
        if await self._enqueue(utterance) and utterance.open:
            self.open_utterance = utterance

    async def _append(self, msg: Append) -> None:
        utterance = self.open_utterance
        if utterance is None:  # an append with nothing open opens one with defaults
            utterance = Utterance(msg.id or new_id())
            if not await self._enqueue(utterance):
                return
            self.open_utterance = utterance
        if len(utterance.text) + len(msg.text) > self.settings.max_utterance_chars:
            await self.send.error(
                "utterance_too_long",
                f"utterance would exceed {self.settings.max_utterance_chars} characters; "
                "this append was refused (flush and start a new utterance)",
                utterance.id,
            )
            return
        utterance.add(msg.text)

    async def _cancel(self, request_id: str | None) -> None:
        """Drop the current and queued utterances (only ``request_id``'s when given)."""
        dropped: list[str] = []
        current = self.current
        if request_id is None or (current is not None and current.id == request_id):
            if (
                current is not None
                and self.current_task is not None
                and not self.current_task.done()
            ):
                current.close()
                self.current_task.cancel()
                dropped.append(current.id)
        keep: deque[Utterance] = deque()
        for utterance in self.queue:
            if request_id is None or utterance.id == request_id:
                utterance.close()
                dropped.append(utterance.id)
            else:
                keep.append(utterance)
        self.queue = keep
        if self.open_utterance is not None and self.open_utterance.id in dropped:
            self.open_utterance = None
        if request_id is not None and not dropped:
            await self.send.error(
                "unknown_id", f"no current or queued item {request_id!r}", request_id
            )
            return
        with contextlib.suppress(ClientGone):
            await self.send.event("cancelled", ids=dropped)

    # -- playing ------------------------------------------------------------------------

    async def _player(self) -> None:
        """Play the queue in order; after ``end`` and an empty queue, say so and close."""
        while True:
            while not self.queue:
                if self.ending:
                    with contextlib.suppress(ClientGone):
                        await self.send.event("closing", reason="end")
                    await self.send.close(1000)
                    return
                self.wake.clear()
                await self.wake.wait()
            utterance = self.queue.popleft()
            self.current = utterance
            task = asyncio.create_task(self._serve(utterance), name=f"tts-item-{utterance.id}")
            self.current_task = task
            try:
                await asyncio.wait({task})
            finally:
                if not task.done():  # the player itself is being cancelled
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                elif not task.cancelled():
                    # The utterance ended (e.g. ClientGone) just as the player was
                    # cancelled: fetch its outcome so asyncio does not log "never retrieved".
                    task.exception()
                self.current, self.current_task = None, None
            if not task.cancelled() and isinstance(task.exception(), ClientGone):
                return

    async def _serve(self, utterance: Utterance) -> None:
        """One utterance, flushed if it stays open without text for ``open_idle_s``."""
        async with flush_when_idle(
            utterance,
            self.settings.open_idle_s,
            lambda: self._forget_open(utterance),
            self.log,
        ):
            await self.playback.play(utterance)
