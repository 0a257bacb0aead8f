"""The text of an utterance while it is still being written: one object, producer to model.

LLM tokens (the Pipecat service in token mode) and ``append`` messages (the TTS socket)
arrive while the utterance is already being spoken. The producer appends them to a
:class:`GrowingText` on the event loop; the engine reads it as it grows; a backend that
speaks streamed text (VibeVoice) takes thread-safe snapshots from its worker thread, and
the others get whole sentences as they complete. No copy of the text is kept anywhere
else, and no task copies it from one container to another.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

from .text import clean_piece


class GrowingText:
    """Append-only text with a close, readable from any thread, awaitable on the event loop.

    ``append`` and ``close`` are called on the event loop; :meth:`snapshot` from any
    thread. A reader that took a snapshot and needs more awaits :meth:`wait_for_news`,
    which returns once something was appended (or the text closed) after that snapshot.
    Pieces are cleaned as the engine's text rules say (control characters become spaces;
    spaces are kept, since they join the words of separate tokens).
    """

    def __init__(self, text: str = "", *, closed: bool = False) -> None:
        self._lock = threading.Lock()
        self._text = ""
        self._closed = False
        self._version = 0
        self._seen = -1  # version of the last snapshot
        self._news: asyncio.Event | None = None
        self.pieces = 0
        #: ``time.monotonic()`` of the last append or close (idle watchdogs read it).
        self.last_change = time.monotonic()
        if text:
            self.append(text)
        if closed:
            self.close()

    # -- writing (event loop) ---------------------------------------------------------------

    def append(self, piece: str) -> None:
        """Add a piece of text; appending to a closed text is a producer bug."""
        if not isinstance(piece, str):
            raise TypeError(f"text pieces must be str, got {type(piece).__name__}")
        piece = clean_piece(piece)
        if not piece:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("GrowingText is closed: no more text can be appended")
            self._text += piece
            self._version += 1
            self.pieces += 1
        self._changed()

    def close(self) -> None:
        """No more text will come (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._version += 1
        self._changed()

    def _changed(self) -> None:
        self.last_change = time.monotonic()
        if self._news is not None:
            self._news.set()

    # -- reading ----------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """All text so far."""
        with self._lock:
            return self._text

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        with self._lock:
            return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._text)

    def snapshot(self) -> tuple[str, bool]:
        """``(text so far, closed)``, thread-safe; :meth:`wait_for_news` waits beyond it."""
        with self._lock:
            self._seen = self._version
            return self._text, self._closed

    async def wait_for_news(self) -> None:
        """Return once the text changed after the last :meth:`snapshot` (event loop only)."""
        if self._news is None:
            self._news = asyncio.Event()
        while True:
            with self._lock:
                if self._version > self._seen:
                    return
                self._news.clear()
            await self._news.wait()

    async def wait_closed(self) -> None:
        """Return once the text is closed (the producer has finished)."""
        while True:
            text, closed = self.snapshot()
            if closed:
                return
            await self.wait_for_news()

    async def new_text(self) -> AsyncIterator[str]:
        """Each stretch of text as it arrives, until the text is closed."""
        cursor = 0
        while True:
            text, closed = self.snapshot()
            if len(text) > cursor:
                yield text[cursor:]
                cursor = len(text)
                continue
            if closed:
                return
            await self.wait_for_news()

    def __repr__(self) -> str:
        with self._lock:
            state = "closed" if self._closed else "open"
            return f"GrowingText({len(self._text)} chars, {state})"
