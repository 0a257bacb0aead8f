"""One utterance on a connection's queue, and the rule that an idle open one is flushed.

A ``speak`` message makes an :class:`Utterance`; with ``final: false`` it stays open and
``append`` messages add to it until ``flush``, ``end`` or the next ``speak``. Its text is
a :class:`~pipecat_vibevoice.engine.GrowingText`: the receive loop appends to it, and
the engine reads that same object while it speaks (no copy, no feeder task).

A client that stops appending must not hold a synthesis slot forever, so while an open
utterance is being served :func:`flush_when_idle` closes it once no text has come for
``open_idle_s``. It only reads ``GrowingText.last_change`` and ``closed``: waiting on the
text's news would take the one reader's place from the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine import GrowingText

if TYPE_CHECKING:
    from loguru import Logger


@dataclass
class Utterance:
    """What to say and how: the request's settings and its (possibly growing) text."""

    id: str
    voice: str | int | None = None
    speed: float = 1.0
    pitch: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    #: The text so far; closed once the client said it is complete.
    text: GrowingText = field(default_factory=GrowingText)
    #: True when text was still arriving as synthesis started (a store field).
    streamed: bool = False

    @property
    def open(self) -> bool:
        """More text may still come."""
        return not self.text.closed

    def add(self, piece: str) -> None:
        """Append a piece of the client's text (ignored once the utterance is closed)."""
        if not self.text.closed:
            self.text.append(piece)

    def close(self) -> None:
        """No more text for this utterance (idempotent)."""
        self.text.close()


async def _watch(
    utterance: Utterance, idle_s: float, on_flush: Callable[[], None], log: Logger
) -> None:
    # Idle time counts from the last text, or from when serving began if that is later:
    # a queued utterance holds no slot, so its wait in the queue is not idleness.
    began = time.monotonic()
    text = utterance.text
    while not text.closed:
        left = max(text.last_change, began) + idle_s - time.monotonic()
        if left <= 0:
            utterance.close()
            log.info(f"utterance {utterance.id}: no text for {idle_s}s, flushed")
            on_flush()
            return
        await asyncio.sleep(left)


@contextlib.asynccontextmanager
async def flush_when_idle(
    utterance: Utterance, idle_s: float, on_flush: Callable[[], None], log: Logger
) -> AsyncIterator[None]:
    """While the body runs, close ``utterance`` once it got no text for ``idle_s``.

    ``on_flush`` is called right after such a close (the connection forgets the
    utterance as its open one); ``log`` is the session's. A complete utterance needs
    no watch.
    """
    if not utterance.open:
        yield
        return
    watchdog = asyncio.create_task(
        _watch(utterance, idle_s, on_flush, log), name=f"tts-idle-{utterance.id}"
    )
    try:
        yield
    finally:
        watchdog.cancel()
        await asyncio.wait({watchdog})  # raises nothing of the watchdog's: our exit goes on
        if not watchdog.cancelled() and watchdog.exception() is not None:
            log.opt(exception=watchdog.exception()).error("idle flush failed")
