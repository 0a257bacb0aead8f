"""One ``/v1/tts/stream`` connection: a receive loop, a queue and a player.

The receive loop validates every client frame and never dies on bad input (an
``error`` event answers it). Accepted items go to a queue that one player task plays
in order. Each item runs in its own task so ``cancel`` can stop it mid-stream: the
engine stream is closed (``aclosing``), which stops model work before its next chunk.

Flow control: the player awaits every send before pulling the next chunk from the
engine, and uvicorn's send waits while the socket's write buffer is above its high
water mark, so a slow client slows only its own synthesis and the server holds at
most one chunk for it. A client that blocks a single send longer than
``send_timeout_s`` is dropped (``slow_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from loguru import logger

from ..engine import EmptyTextError, TextTooLongError, TTSEngine, UnknownVoiceError
from .cache import CachedAudio, CachedChunk, cache_key
from .limits import TokenBucket
from .protocol import (
    Append,
    Cancel,
    End,
    Flush,
    ProtocolError,
    Speak,
    event,
    new_id,
    parse_message,
)
from .scheduler import DEADLINE, FIRST_CHUNK_SLACK_S
from .state import TTSService
from .store import SynthesisRecord


class ClientGone(Exception):
    """The client disconnected or stopped reading; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Busy(Exception):
    """No synthesis slot was free."""


@dataclass
class Item:
    """One utterance on a connection's queue."""

    id: str
    voice: str | int | None
    speed: float
    pitch: float
    options: dict[str, Any]
    parts: list[str]
    open: bool
    chars: int = 0
    streamed: bool = False  # text still arriving when synthesis started
    news: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def text(self) -> str:
        """The text so far."""
        return "".join(self.parts)

    def add(self, text: str) -> None:
        """Append streamed text and wake the synthesis waiting for it."""
        if text:
            self.parts.append(text)
            self.chars += len(text)
            self.news.set()

    def close(self) -> None:
        """No more text for this item."""
        self.open = False
        self.news.set()


@dataclass
class ItemStats:
    """Timing of one item's chunks as sent (first-chunk latency, gaps, underruns)."""

    started: float = field(default_factory=time.perf_counter)
    first_sent: float | None = None
    last_sent: float | None = None
    audio_s: float = 0.0
    chunks: int = 0
    gaps: list[float] = field(default_factory=list)
    underruns: int = 0

    def sent(self, duration_s: float) -> float | None:
        """Note one chunk sent now; returns the gap to the previous chunk (if any)."""
        now = time.perf_counter()
        gap = None
        if self.first_sent is None:
            self.first_sent = now
        else:
            gap = now - (self.last_sent or now)
            self.gaps.append(gap)
            # Audio already delivered would have played out before this chunk arrived.
            if now - self.first_sent > self.audio_s:
                self.underruns += 1
        self.last_sent = now
        self.audio_s += duration_s
        self.chunks += 1
        return gap


def _error_reason(exc: Exception) -> str:
    if isinstance(exc, EmptyTextError):
        return "empty_text"
    if isinstance(exc, TextTooLongError):
        return "text_too_long"
    if isinstance(exc, UnknownVoiceError):
        return "unknown_voice"
    return "invalid_value"


class TTSSession:
    """Serves one accepted websocket until it closes."""

    def __init__(self, websocket: WebSocket, service: TTSService, engine: TTSEngine) -> None:
        self.ws = websocket
        self.service = service
        self.settings = service.settings
        self.engine = engine
        self.id = new_id()
        self.log = logger.bind(session=self.id)
        self.queue: deque[Item] = deque()
        self.current: Item | None = None
        self.current_task: asyncio.Task | None = None
        self.open_item: Item | None = None
        self.ending = False
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.bucket = TokenBucket(self.settings.rate_limit_per_s, self.settings.rate_limit_burst)
        self.gone: str | None = None

    # -- sending ------------------------------------------------------------------------

    async def _send_raw(self, text: str | None = None, data: bytes | None = None) -> None:
        if self.gone:
            raise ClientGone(self.gone)
        try:
            if data is not None:
                coro = self.ws.send_bytes(data)
            else:
                coro = self.ws.send_text(text or "")
            await asyncio.wait_for(coro, self.settings.send_timeout_s)
        except TimeoutError:
            self.gone = "slow_client"
            self.service.metrics.errors.labels("slow_client").inc()
            self.log.warning(f"client blocked a send for {self.settings.send_timeout_s}s: dropping")
            raise ClientGone("slow_client") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # WebSocketDisconnect, ClientDisconnected, RuntimeError
            self.gone = self.gone or "disconnected"
            raise ClientGone("disconnected") from exc

    async def send_event(self, kind: str, **fields: Any) -> None:
        """One JSON event, serialised with the audio frames."""
        async with self.send_lock:
            await self._send_raw(event(kind, **fields))

    async def send_error(self, reason: str, message: str, request_id: str | None = None) -> None:
        """An ``error`` event (counted by reason); a gone client is ignored."""
        self.service.metrics.errors.labels(reason).inc()
        with contextlib.suppress(ClientGone):
            await self.send_event("error", id=request_id, reason=reason, message=message)

    async def _send_chunk(self, meta: str, pcm: bytes) -> None:
        async with self.send_lock:
            await self._send_raw(meta)
            await self._send_raw(data=pcm)

    async def send_chunk(self, meta: str, pcm: bytes) -> None:
        """A ``chunk`` event and its audio frame, never split by a cancel.

        The pair is shielded, so a cancelled item still completes the pair it started
        and the ``cancelled`` event (which waits for the lock) always comes after it.
        """
        await asyncio.shield(self._send_chunk(meta, pcm))

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Greet, then serve until the client leaves or ``end`` drains the queue."""
        voices = list(self.engine.backend.voices())
        await self.send_event(
            "ready",
            session=self.id,
            sample_rate=self.engine.config.sample_rate,
            chunk_ms=self.engine.config.chunk_ms,
            encoding="pcm_s16le",
            channels=1,
            engine=self.engine.backend.name,
            voices=voices,
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
            for item in self.queue:
                item.close()
            self.queue.clear()

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.gone = self.gone or "disconnected"
                return
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        data, text = message.get("bytes"), message.get("text")
        if data is not None and text is None:
            await self.send_error(
                "binary_not_supported", "send JSON text messages; binary frames are not accepted"
            )
            return
        if text is None:
            return
        if len(text.encode("utf-8", "surrogatepass")) > self.settings.max_message_bytes:
            await self.send_error(
                "message_too_large",
                f"messages are limited to {self.settings.max_message_bytes} bytes",
            )
            return
        limited = not self.bucket.allow()
        if limited and '"cancel"' not in text:  # a cancel always gets through
            await self.send_error(
                "rate_limited", f"more than {self.settings.rate_limit_per_s:g} messages per second"
            )
            return
        try:
            msg = parse_message(text, self.settings.max_message_chars)
        except ProtocolError as exc:
            await self.send_error(exc.reason, str(exc), exc.request_id)
            return
        if limited and not isinstance(msg, Cancel):
            await self.send_error(
                "rate_limited", f"more than {self.settings.rate_limit_per_s:g} messages per second"
            )
            return
        if isinstance(msg, Cancel):
            await self._cancel(msg.id)
            return
        if self.ending:
            await self.send_error("ended", "the connection was ended; no new text is accepted")
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

    def _close_open(self) -> None:
        if self.open_item is not None:
            self.open_item.close()
            self.open_item = None

    async def _enqueue(self, item: Item) -> bool:
        if len(self.queue) >= self.settings.max_queue:
            await self.send_error(
                "queue_full", f"at most {self.settings.max_queue} items may wait", item.id
            )
            return False
        self.queue.append(item)
        self.wake.set()
        await self.send_event("queued", id=item.id, position=len(self.queue))
        return True

    async def _speak(self, msg: Speak) -> None:
        self._close_open()  # a new utterance completes the previous one
        item = Item(msg.id, msg.voice, msg.speed, msg.pitch, msg.options, [], open=not msg.final)
        item.add(msg.text)
        if await self._enqueue(item) and item.open:
            self.open_item = item

    async def _append(self, msg: Append) -> None:
        item = self.open_item
        if item is None:
            item = Item(msg.id or new_id(), None, 1.0, 1.0, {}, [], open=True)
            if not await self._enqueue(item):
                return
            self.open_item = item
        if item.chars + len(msg.text) > self.settings.max_utterance_chars:
            await self.send_error(
                "utterance_too_long",
                f"utterance would exceed {self.settings.max_utterance_chars} characters; "
                "this append was refused (flush and start a new utterance)",
                item.id,
            )
            return
        item.add(msg.text)

    async def _cancel(self, request_id: str | None) -> None:
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
        keep: deque[Item] = deque()
        for item in self.queue:
            if request_id is None or item.id == request_id:
                item.close()
                dropped.append(item.id)
            else:
                keep.append(item)
        self.queue = keep
        if self.open_item is not None and self.open_item.id in dropped:
            self.open_item = None
        if request_id is not None and not dropped:
            await self.send_error(
                "unknown_id", f"no current or queued item {request_id!r}", request_id
            )
            return
        with contextlib.suppress(ClientGone):
            await self.send_event("cancelled", ids=dropped)

    async def _player(self) -> None:
        while True:
            while not self.queue:
                if self.ending:
                    with contextlib.suppress(ClientGone):
                        await self.send_event("closing", reason="end")
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.ws.close(1000), self.settings.send_timeout_s)
                    return
                self.wake.clear()
                await self.wake.wait()
            item = self.queue.popleft()
            self.current = item
            task = asyncio.create_task(self._play(item), name=f"tts-item-{item.id}")
            self.current_task = task
            try:
                await asyncio.wait({task})
            finally:
                if not task.done():  # the player itself is being cancelled
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                elif not task.cancelled():
                    # The item ended (e.g. ClientGone) just as the player was cancelled:
                    # fetch its outcome so asyncio does not log "never retrieved".
                    task.exception()
                self.current, self.current_task = None, None
            if not task.cancelled() and isinstance(task.exception(), ClientGone):
                return

    # -- one item -----------------------------------------------------------------------

    async def _pieces(self, item: Item) -> AsyncIterator[str]:
        """The item's text as it grows, until it is closed (streamed LLM output)."""
        index = 0
        while True:
            if index < len(item.parts):
                index += 1
                yield item.parts[index - 1]
                continue
            if not item.open:
                return
            item.news.clear()
            if index < len(item.parts) or not item.open:
                continue
            try:
                await asyncio.wait_for(item.news.wait(), self.settings.open_idle_s)
            except TimeoutError:
                # A client that stops appending must not hold a synthesis slot forever.
                self.log.info(f"item {item.id}: no text for {self.settings.open_idle_s}s, flushed")
                item.close()
                if self.open_item is item:
                    self.open_item = None

    async def _play(self, item: Item) -> None:
        svc, metrics = self.service, self.service.metrics
        stats = ItemStats()
        created = time.time()
        outcome, error, cache_hit = "ok", None, False
        voice: str | None = None
        complete = not item.open
        item.streamed = not complete
        try:
            voice = self.engine.resolve_voice(item.voice)
            key = None
            if complete and svc.cache.cacheable(item.text):
                key = cache_key(
                    item.text,
                    voice,
                    item.speed,
                    item.pitch,
                    {**svc.identity(self.engine), "options": item.options},
                )
                if svc.cache.in_memory(key) or svc.cache.directory is None:
                    hit = svc.cache.get(key)
                else:
                    hit = await asyncio.to_thread(svc.cache.get, key)
                metrics.cache_requests.labels("hit" if hit else "miss").inc()
                if hit is not None:
                    cache_hit = True
                    await self._stream_cached(item, voice, hit, stats)
                    return
            if not await svc.syntheses.acquire(self.settings.admission_wait_s):
                raise Busy()
            metrics.active_syntheses.inc()
            try:
                collected = await self._synthesize(item, voice, stats, keep=key is not None)
            finally:
                svc.syntheses.release()
                metrics.active_syntheses.dec()
            entry = CachedAudio(tuple(collected)) if key is not None and collected else None
            if entry is not None:
                # Complete: cached before ``done``, so the client's next request hits.
                svc.cache.put(key, entry)
            await self._done(item, stats, cached=False)
            if entry is not None:
                svc.cache.persist(key, entry)
        except Busy:
            outcome, error = "busy", "no synthesis slot free"
            await self.send_error("busy", "the server is at capacity; retry shortly", item.id)
        except ValueError as exc:
            outcome, error = "error", str(exc)
            await self.send_error(_error_reason(exc), str(exc), item.id)
        except asyncio.CancelledError:
            outcome = "disconnected" if self.gone else "cancelled"
            raise
        except ClientGone as exc:
            outcome, error = "disconnected", exc.reason
            raise
        except Exception as exc:
            outcome, error = "error", repr(exc)
            self.log.exception(f"synthesis of item {item.id} failed")
            await self.send_error("engine_error", f"synthesis failed: {exc}", item.id)
        finally:
            self._record(item, voice, stats, created, outcome, error, cache_hit)

    async def _synthesize(
        self, item: Item, voice: str, stats: ItemStats, keep: bool
    ) -> list[CachedChunk]:
        """Stream the engine's chunks to the client; returns them when ``keep``."""
        collected: list[CachedChunk] = []
        text: Any = item.text if not item.open else self._pieces(item)
        await self.send_event(
            "started",
            id=item.id,
            voice=voice,
            cached=False,
            sample_rate=self.engine.config.sample_rate,
        )
        chunks = _engine_chunks(self.engine, text, voice, item.speed, item.pitch, item.options)
        width = self.service.engine_width(self.engine)
        # Start-up buffer: the first send waits for ``prebuffer_ms`` of audio, but no
        # longer than ``prebuffer_wait_ms`` after the first chunk was ready, so the
        # listener usually starts with more than one chunk in hand at a bounded cost.
        prebuffer_s = self.settings.prebuffer_ms / 1000
        wait_s = self.settings.prebuffer_wait_ms / 1000
        rate = self.engine.config.sample_rate
        pending: list[tuple[bytes, float, float, str]] = []
        pending_s = 0.0
        ready_at = 0.0
        pull: asyncio.Task | None = None

        async def flush() -> None:
            nonlocal pending_s
            for chunk in pending:
                await self._emit(item, stats, *chunk)
            pending.clear()
            pending_s = 0.0

        async with contextlib.aclosing(chunks):
            try:
                while True:
                    if pull is None:
                        await self._hold_back(stats, width)
                        # Read by the engine pool if this pull needs model work.
                        DEADLINE.set(self._deadline(stats))
                        if not (stats.first_sent is None and pending):
                            got = await _next(chunks)
                        else:  # filling the start-up buffer: pull with a time limit
                            pull = asyncio.ensure_future(_next(chunks))
                    if pull is not None:
                        left = ready_at + wait_s - time.perf_counter()
                        if left > 0 and not pull.done():
                            await asyncio.wait({pull}, timeout=left)
                        if not pull.done():
                            await flush()  # waited long enough: start with what we have
                        got = await pull
                        pull = None
                    if got is None:
                        break
                    pcm, start_s, end_s, spoken = got
                    if keep:
                        collected.append(CachedChunk(pcm, start_s, end_s, spoken))
                    if not pending:
                        ready_at = time.perf_counter()
                    pending.append(got)
                    pending_s += len(pcm) / 2 / rate
                    if stats.first_sent is None and pending_s < prebuffer_s:
                        continue
                    await flush()
                await flush()  # a short utterance that never filled the buffer
            finally:
                if pull is not None and not pull.done():
                    pull.cancel()  # closes the engine stream inside it
                    with contextlib.suppress(BaseException):
                        await pull
        return collected

    async def _hold_back(self, stats: ItemStats, width: int) -> None:
        """Under contention, let a stream that is far ahead wait for its client.

        Engine work units are not preemptible (a Piper window is up to ~3 s of audio);
        when more streams synthesise than there are workers, a stream seconds ahead of
        its listener would occupy a worker that a stream about to run dry needs. It
        waits until its lead is back to ``max_lead_s``. Without contention it runs
        flat out.
        """
        limit = self.settings.max_lead_s
        if limit <= 0 or stats.first_sent is None:
            return
        while self.service.syntheses.in_use > width:
            lead = self._deadline(stats) - time.perf_counter()
            if lead <= limit:
                return
            await asyncio.sleep(min(lead - limit, 0.25))

    @staticmethod
    def _deadline(stats: ItemStats) -> float:
        """When this item's listener runs out of audio (see :mod:`.scheduler`)."""
        if stats.first_sent is None:
            return stats.started + FIRST_CHUNK_SLACK_S
        return stats.first_sent + stats.audio_s

    async def _stream_cached(
        self, item: Item, voice: str, hit: CachedAudio, stats: ItemStats
    ) -> None:
        await self.send_event(
            "started",
            id=item.id,
            voice=voice,
            cached=True,
            sample_rate=self.engine.config.sample_rate,
        )
        for chunk in hit.chunks:
            await self._emit(
                item, stats, chunk.pcm, chunk.start_s, chunk.end_s, chunk.text, cached=True
            )
        await self._done(item, stats, cached=True)

    async def _emit(
        self,
        item: Item,
        stats: ItemStats,
        pcm: bytes,
        start_s: float,
        end_s: float,
        spoken: str,
        cached: bool = False,
    ) -> None:
        meta = event(
            "chunk",
            id=item.id,
            seq=stats.chunks,
            start_s=round(start_s, 4),
            end_s=round(end_s, 4),
            bytes=len(pcm),
            text=spoken or None,
        )
        await self.send_chunk(meta, pcm)
        metrics = self.service.metrics
        underruns = stats.underruns
        gap = stats.sent(len(pcm) / 2 / self.engine.config.sample_rate)
        if gap is None:
            metrics.first_chunk.labels("hit" if cached else "miss").observe(
                (stats.first_sent or 0.0) - stats.started
            )
        else:
            metrics.chunk_gap.observe(gap)
        if stats.underruns > underruns:
            metrics.underruns.inc()

    async def _done(self, item: Item, stats: ItemStats, cached: bool) -> None:
        first = (stats.first_sent - stats.started) * 1000 if stats.first_sent else None
        await self.send_event(
            "done",
            id=item.id,
            cached=cached,
            chunks=stats.chunks,
            audio_s=round(stats.audio_s, 4),
            first_chunk_ms=round(first, 1) if first is not None else None,
            total_ms=round((time.perf_counter() - stats.started) * 1000, 1),
        )

    def _record(
        self,
        item: Item,
        voice: str | None,
        stats: ItemStats,
        created: float,
        outcome: str,
        error: str | None,
        cache_hit: bool,
    ) -> None:
        metrics = self.service.metrics
        metrics.syntheses.labels(outcome).inc()
        metrics.audio_seconds.inc(stats.audio_s)
        text = item.text
        gaps = stats.gaps
        try:
            self.service.store.record(
                SynthesisRecord(
                    session_id=self.id,
                    request_id=item.id,
                    text_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                    text_chars=len(text),
                    voice=voice,
                    speed=item.speed,
                    pitch=item.pitch,
                    engine=self.engine.backend.name,
                    audio_s=round(stats.audio_s, 4),
                    total_ms=round((time.perf_counter() - stats.started) * 1000, 2),
                    chunks=stats.chunks,
                    outcome=outcome,
                    cache_hit=cache_hit,
                    first_chunk_ms=round((stats.first_sent - stats.started) * 1000, 2)
                    if stats.first_sent
                    else None,
                    gap_mean_ms=round(sum(gaps) / len(gaps) * 1000, 2) if gaps else None,
                    gap_max_ms=round(max(gaps) * 1000, 2) if gaps else None,
                    underruns=stats.underruns,
                    error=error,
                    settings={
                        "options": item.options,
                        "sample_rate": self.engine.config.sample_rate,
                        "chunk_ms": self.engine.config.chunk_ms,
                        "streamed_text": item.streamed,
                    },
                    created_at=created,
                )
            )
        except Exception as exc:  # the store must never break the audio path
            self.log.warning(f"could not record synthesis {item.id}: {exc!r}")


async def _next(chunks: AsyncIterator[Any]) -> Any:
    """The next item of ``chunks``, or None at the end (a task cannot raise StopAsyncIteration)."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


async def _engine_chunks(
    engine: TTSEngine, text: Any, voice: str, speed: float, pitch: float, options: dict[str, Any]
) -> AsyncIterator[tuple[bytes, float, float, str]]:
    """``(pcm, start_s, end_s, text)`` per chunk, from ``stream_chunks`` when the engine has it.

    Without it, times come from sample counts and the spoken text is not known.
    """
    if hasattr(engine, "stream_chunks"):
        stream = engine.stream_chunks(text, voice, speed, pitch, **options)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                yield chunk.pcm, chunk.start_s, chunk.end_s, chunk.text
        return
    rate = engine.config.sample_rate
    samples = 0
    stream = engine.synthesize_streaming(text, voice, speed, pitch, **options)
    async with contextlib.aclosing(stream):
        async for pcm in stream:
            n = len(pcm) // 2
            yield pcm, samples / rate, (samples + n) / rate, ""
            samples += n
