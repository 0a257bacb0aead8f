"""Serving one utterance: from the cache or the engine, with a slot, to one outcome.

An utterance whose text was complete when its turn came, and short enough to cache, is
looked up first; a hit is replayed without a synthesis slot. Everything else needs one
of ``max_active_syntheses`` slots (``busy`` once ``admission_wait_s`` passed without
one) and streams from the engine (:class:`.stream.UtteranceStream`). A complete,
cacheable result is cached before its ``done``, so the client's next request hits, and
persisted after it.

Each way an utterance can end is turned into an ``error`` event for the client where
one is due, and into the outcome that :mod:`.record` counts and stores.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..engine import EmptyTextError, TextTooLongError, TTSEngine, UnknownVoiceError
from .cache import CachedAudio, cache_key
from .record import Outcome, record_utterance
from .sender import ClientGone, ClientSender
from .state import ServingState
from .stream import StreamStats, UtteranceStream
from .utterance import Utterance

if TYPE_CHECKING:
    from loguru import Logger


class Busy(Exception):
    """No synthesis slot was free."""


def error_reason(exc: ValueError) -> str:
    """The protocol's reason code for a request the engine refused."""
    if isinstance(exc, EmptyTextError):
        return "empty_text"
    if isinstance(exc, TextTooLongError):
        return "text_too_long"
    if isinstance(exc, UnknownVoiceError):
        return "unknown_voice"
    return "invalid_value"


class UtterancePlayback:
    """Plays the utterances of one connection, one :meth:`play` call each."""

    def __init__(
        self,
        state: ServingState,
        engine: TTSEngine,
        send: ClientSender,
        session_id: str,
        log: Logger,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.engine = engine
        self.send = send
        self.session_id = session_id
        self.log = log

    async def play(self, utterance: Utterance) -> None:
        """Serve ``utterance`` to its end; raises only ``ClientGone`` and cancellation.

        The store row is queued before the client hears how the utterance ended
        (``done`` or ``error``): a client that has seen the end finds its row once the
        store is flushed.
        """
        state, metrics = self.state, self.state.metrics
        stats = StreamStats()
        outcome = Outcome()
        complete = not utterance.open
        utterance.streamed = not complete
        ending: Callable[[], Awaitable[None]] | None = None
        try:
            voice = outcome.voice = self.engine.resolve_voice(utterance.voice)
            stream = UtteranceStream(
                utterance, voice, stats, state=state, engine=self.engine, send=self.send
            )
            key, hit = None, None
            if complete and state.cache.cacheable(utterance.text.text):
                key = self._cache_key(utterance, voice)
                hit = await self._lookup(key)
                metrics.cache_requests.labels("hit" if hit else "miss").inc()
            if hit is not None:
                outcome.cache_hit = True
                await stream.replay(hit)
            else:
                await self._synthesize(stream, key)
            ending = functools.partial(stream.done, cached=hit is not None)
        except Busy:
            outcome.kind, outcome.error = "busy", "no synthesis slot free"
            ending = functools.partial(
                self.send.error, "busy", "the server is at capacity; retry shortly", utterance.id
            )
        except ValueError as exc:
            outcome.kind, outcome.error = "error", str(exc)
            ending = functools.partial(self.send.error, error_reason(exc), str(exc), utterance.id)
        except asyncio.CancelledError:
            outcome.kind = "disconnected" if self.send.gone else "cancelled"
            raise
        except ClientGone as exc:
            outcome.kind, outcome.error = "disconnected", exc.reason
            raise
        except Exception as exc:
            outcome.kind, outcome.error = "error", repr(exc)
            self.log.exception(f"synthesis of utterance {utterance.id} failed")
            ending = functools.partial(
                self.send.error, "engine_error", f"synthesis failed: {exc}", utterance.id
            )
        finally:
            record_utterance(
                state, self.engine, self.session_id, utterance, stats, outcome, self.log
            )
        if ending is not None:
            await ending()

    async def _synthesize(self, stream: UtteranceStream, key: str | None) -> None:
        """Synthesise in a slot of the server's; cache the result under ``key`` if given."""
        state, metrics = self.state, self.state.metrics
        if not await state.syntheses.acquire(self.settings.admission_wait_s):
            raise Busy()
        metrics.active_syntheses.inc()
        try:
            collected = await stream.synthesize(keep=key is not None)
        finally:
            state.syntheses.release()
            metrics.active_syntheses.dec()
        if key is not None and collected:
            entry = CachedAudio(tuple(collected))
            state.cache.put(key, entry)  # before ``done``: the next request hits
            state.cache.persist(key, entry)  # in the background

    def _cache_key(self, utterance: Utterance, voice: str) -> str:
        identity = {**self.state.identity(self.engine), "options": utterance.options}
        return cache_key(utterance.text.text, voice, utterance.speed, utterance.pitch, identity)

    async def _lookup(self, key: str) -> CachedAudio | None:
        """The cached audio of ``key``; a disk read runs off the event loop."""
        cache = self.state.cache
        if cache.in_memory(key) or cache.directory is None:
            return cache.get(key)
        return await asyncio.to_thread(cache.get, key)
