"""Token streaming support: one LLM turn's tokens as one async text stream.

In ``TextAggregationMode.TOKEN`` Pipecat calls ``run_tts`` once per LLM token, on
the processor's own task, one call after another. A model that conditions on the
text so far (VibeVoice-Realtime) speaks best and starts soonest when it sees the
whole turn as one growing stream, so the service turns those calls into an
:class:`AsyncIterable` of text that a single engine request consumes.

Engines that cannot take a text stream yet get the same tokens regrouped into
sentences (:func:`sentences_from`), spoken one engine request each, so TOKEN mode
works with any engine; it only loses the sub-sentence head start.

:class:`HeldText` keeps the sentence text frames Pipecat builds from the tokens
until the audio that speaks them has been produced.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from pipecat.frames.frames import Frame, TTSTextFrame
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

_CLOSED = object()


class TextStream:
    """An async iterator of text pieces fed from another task, closed explicitly.

    ``put`` never blocks (tokens are tiny and arrive slower than speech is made);
    ``close`` ends the iteration once the pieces before it are consumed. Iteration
    happens once: the engine request that consumes it owns it.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self.pieces = 0
        self.chars = 0

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (pieces may still be queued)."""
        return self._closed

    def put(self, text: str) -> None:
        """Queue a piece of text; ignored after :meth:`close`."""
        if self._closed or not text:
            return
        self.pieces += 1
        self.chars += len(text)
        self._queue.put_nowait(text)

    def close(self) -> None:
        """No more text: iteration ends after the queued pieces (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _CLOSED:
            # Leave the marker for anyone draining after the consumer stopped.
            self._queue.put_nowait(_CLOSED)
            raise StopAsyncIteration
        return item

    async def drain(self) -> None:
        """Discard pieces until the stream is closed (after a failed request)."""
        async for _ in self:
            pass


class HeldText:
    """Frames held back until the audio that speaks their text has been produced.

    Each ``TTSTextFrame`` gets the end offset of its text in the turn's text (the
    running total of the held texts, which Pipecat cut from the same tokens the
    engine reads); other frames share the offset of the text frame before them.
    """

    def __init__(self) -> None:
        self.frames: list[tuple[int, Frame]] = []
        self.chars = 0

    def hold(self, frame: Frame) -> None:
        """Queue a frame; a text frame advances the offset by its text."""
        if isinstance(frame, TTSTextFrame):
            self.chars += len(frame.text)
        self.frames.append((self.chars, frame))

    def release(self, upto: int | None) -> list[Frame]:
        """Frames whose text ends at or before ``upto`` (all of them for ``None``), in order."""
        count = 0
        for end, _ in self.frames:
            if upto is not None and end > upto:
                break
            count += 1
        released = [frame for _, frame in self.frames[:count]]
        del self.frames[:count]
        return released


async def sentences_from(pieces: AsyncIterator[str], language: str = "en") -> AsyncIterator[str]:
    """Regroup streamed text into sentences with Pipecat's own sentence rules.

    The fallback for engines that take only whole strings: each sentence is
    yielded as soon as its end is certain, the remainder when the stream closes.
    """
    aggregator = SimpleTextAggregator(aggregation_type=TextType.SENTENCE, language=language)
    async for piece in pieces:
        async for sentence in aggregator.aggregate(piece):
            if sentence.text.strip():
                yield sentence.text
    rest = await aggregator.flush()
    if rest is not None and rest.text.strip():
        yield rest.text


def engine_accepts_text_stream(engine: Any) -> bool:
    """Whether ``engine.synthesize_streaming`` takes an ``AsyncIterable[str]`` as its text.

    The agreed extension of the engine API; an engine may say so explicitly with a
    boolean ``accepts_text_stream`` attribute, otherwise the annotation of the
    ``text`` parameter decides. Anything unclear counts as "no", which only costs
    latency (the sentence fallback), never correctness.
    """
    flag = getattr(engine, "accepts_text_stream", None)
    if isinstance(flag, bool):
        return flag
    method = getattr(engine, "synthesize_streaming", None)
    if method is None:
        return False
    try:
        parameter = inspect.signature(method).parameters.get("text")
    except (TypeError, ValueError):
        return False
    if parameter is None:
        return False
    annotation = parameter.annotation
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "AsyncIterable" in text or "AsyncIterator" in text
