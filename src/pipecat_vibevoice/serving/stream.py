"""Streaming one utterance's audio to its client: ``started``, chunks, ``done``, and timing.

Each chunk goes out as a ``chunk`` event followed by its binary frame, and every send is
awaited before the next chunk is pulled from the engine, so a slow client slows only
its own synthesis and the server holds at most one chunk for it (:mod:`.sender`).

Three things decide *when* the next chunk is pulled:

* **The start-up buffer.** With ``prebuffer_ms`` set, the first send waits until that
  much audio is ready, but no longer than ``prebuffer_wait_ms`` after the first chunk
  was, so the listener usually starts with more than one chunk in hand at a bounded
  cost.
* **Hold-back under contention.** Engine work units cannot be interrupted (a Piper
  window is up to ~3 s of audio); when more streams synthesise than the engine has
  workers, a stream more than ``max_lead_s`` ahead of its listener waits, so it does not
  take a worker that a stream about to run dry needs. Without contention it runs flat
  out.
* **The deadline.** Before each pull the stream tells the engine pool when its listener
  runs out of audio, and whether it has any audio yet
  (:func:`..engine.scheduling.set_pull_deadline`), so the most urgent model work runs first and
  new utterances do not starve the ones playing.

:class:`StreamStats` times the chunks as sent (first-chunk latency, gaps, underruns)
for the metrics, the ``done`` event and the store row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..engine import SpeechChunk, TTSEngine
from ..engine.scheduling import listener_deadline, set_pull_deadline
from .cache import CachedAudio, CachedChunk
from .protocol import event
from .sender import ClientSender
from .settings import ServingSettings
from .state import ServingState
from .utterance import Utterance


@dataclass
class StreamStats:
    """Timing of one utterance's chunks as sent (first-chunk latency, gaps, underruns)."""

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

    def deadline(self) -> tuple[float, bool]:
        """``(when this listener runs out of audio, whether it has nothing yet)``.

        The engine pool's order (:func:`..engine.scheduling.listener_deadline`): before
        the first chunk, the start plus a small slack, so a new utterance goes ahead of
        streams with more than that buffered but not of one about to run dry.
        """
        return listener_deadline(self.started, self.first_sent, self.audio_s)

    @property
    def first_chunk_ms(self) -> float | None:
        """Time from the start to the first chunk sent (None before it)."""
        return (self.first_sent - self.started) * 1000 if self.first_sent else None

    @property
    def total_ms(self) -> float:
        """Time from the start until now."""
        return (time.perf_counter() - self.started) * 1000


class UtteranceStream:
    """Sends one utterance's audio, from the engine or from the cache, and times it."""

    def __init__(
        self,
        utterance: Utterance,
        voice: str,
        stats: StreamStats,
        *,
        state: ServingState,
        engine: TTSEngine,
        send: ClientSender,
    ) -> None:
        self.utterance = utterance
        self.voice = voice
        self.stats = stats
        self.state = state
        self.settings: ServingSettings = state.settings
        self.engine = engine
        self.send = send
        self.rate = engine.config.sample_rate

    async def started(self, cached: bool) -> None:
        """The ``started`` event: this utterance's audio comes next.

        In a pool it names the server that speaks it (``replica``), so a client can
        tell the replicas apart; a single server leaves the field out.
        """
        await self.send.event(
            "started",
            id=self.utterance.id,
            voice=self.voice,
            cached=cached,
            sample_rate=self.rate,
            replica=self.settings.replica or None,
        )

    async def done(self, cached: bool) -> None:
        """The ``done`` event, with the utterance's totals."""
        first = self.stats.first_chunk_ms
        await self.send.event(
            "done",
            id=self.utterance.id,
            cached=cached,
            chunks=self.stats.chunks,
            audio_s=round(self.stats.audio_s, 4),
            first_chunk_ms=round(first, 1) if first is not None else None,
            total_ms=round(self.stats.total_ms, 1),
        )

    async def replay(self, hit: CachedAudio) -> None:
        """A cache hit: ``started`` and its chunks as stored (``done`` is the caller's)."""
        await self.started(cached=True)
        for chunk in hit.chunks:
            await self._emit(chunk, cached=True)

    async def synthesize(self, keep: bool) -> list[CachedChunk]:
        """``started``, then the engine's chunks as they come; returns them when ``keep``.

        The text is read in place while it grows (a :class:`GrowingText`), or passed
        whole once the client has closed it. ``done`` is the caller's, once the result
        is cached.
        """
        utterance = self.utterance
        collected: list[CachedChunk] = []
        await self.started(cached=False)
        text = utterance.text.text if not utterance.open else utterance.text
        chunks = self.engine.stream_chunks(
            text, self.voice, utterance.speed, utterance.pitch, **utterance.options
        )
        width = self.state.engine_width(self.engine)
        prebuffer_s = self.settings.prebuffer_ms / 1000
        wait_s = self.settings.prebuffer_wait_ms / 1000
        pending: list[SpeechChunk] = []  # ready, not sent yet (the start-up buffer)
        pending_s = 0.0
        ready_at = 0.0  # when the first pending chunk was ready
        pull: asyncio.Task[SpeechChunk | None] | None = None  # a timed pull under way

        async def flush() -> None:
            nonlocal pending_s
            for ready in pending:
                await self._emit(ready)
            pending.clear()
            pending_s = 0.0

        async with contextlib.aclosing(chunks):
            try:
                while True:
                    if pull is None:
                        await self._hold_back(width)
                        deadline, first_chunk = self.stats.deadline()
                        set_pull_deadline(deadline, first_chunk=first_chunk)
                        if not (self.stats.first_sent is None and pending):
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
                    if keep:
                        collected.append(
                            CachedChunk(got.pcm, got.start_s, got.end_s, got.text, got.words)
                        )
                    if not pending:
                        ready_at = time.perf_counter()
                    pending.append(got)
                    pending_s += self._duration(got.pcm)
                    if self.stats.first_sent is None and pending_s < prebuffer_s:
                        continue
                    await flush()
                await flush()  # a short utterance that never filled the buffer
            finally:
                if pull is not None and not pull.done():
                    pull.cancel()  # closes the engine stream inside it
                    with contextlib.suppress(BaseException):
                        await pull
        return collected

    async def _hold_back(self, width: int) -> None:
        """Under contention, wait while this stream is more than ``max_lead_s`` ahead.

        "Contention" is more utterances synthesising than the engine runs model calls
        at once (``width``); before its first chunk a stream never waits.
        """
        limit = self.settings.max_lead_s
        if limit <= 0 or self.stats.first_sent is None:
            return
        while self.state.syntheses.in_use > width:
            lead = self.stats.deadline()[0] - time.perf_counter()
            if lead <= limit:
                return
            await asyncio.sleep(min(lead - limit, 0.25))

    def _duration(self, pcm: bytes) -> float:
        return len(pcm) / 2 / self.rate

    async def _emit(self, chunk: SpeechChunk | CachedChunk, cached: bool = False) -> None:
        """One ``chunk`` event and its audio, then the stats and metrics of its timing.

        ``words`` lists the words whose speech starts in the chunk as ``[word, start_s]``
        (seconds from the utterance's audio start, like ``start_s``), so a client can
        show or cut the text as it plays; empty when none starts there.
        """
        meta = event(
            "chunk",
            id=self.utterance.id,
            seq=self.stats.chunks,
            start_s=round(chunk.start_s, 4),
            end_s=round(chunk.end_s, 4),
            bytes=len(chunk.pcm),
            text=chunk.text or None,
            words=[[word, round(at, 4)] for word, at in chunk.words],
        )
        await self.send.chunk(meta, chunk.pcm)
        metrics, stats = self.state.metrics, self.stats
        underruns = stats.underruns
        gap = stats.sent(self._duration(chunk.pcm))
        if gap is None:
            metrics.first_chunk.labels("hit" if cached else "miss").observe(
                (stats.first_sent or 0.0) - stats.started
            )
        else:
            metrics.chunk_gap.observe(gap)
        if stats.underruns > underruns:
            metrics.underruns.inc()


async def _next(chunks: AsyncIterator[SpeechChunk]) -> SpeechChunk | None:
    """The next chunk, or None at the end (a task cannot raise StopAsyncIteration)."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
