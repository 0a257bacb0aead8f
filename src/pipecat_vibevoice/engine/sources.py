"""From the text of a request to backend audio pieces, with text spans on the request text.

Three ways, one per kind of text:

* a whole string: cut lazily into whole-sentence segments (bounded memory for long
  text), one backend stream per segment;
* a :class:`GrowingText` for a backend that reads streamed text (VibeVoice): one backend
  stream over the growing text; when the backend runs out of text it yields a *waiting*
  piece and we await new text instead of blocking a worker thread;
* a :class:`GrowingText` for any other backend (Piper): each sentence as soon as it is
  complete (the whitespace after its end mark has arrived), spoken like a whole string.

Spans and word marks come back in the coordinates of the request's text (the cleaned
string, or the growing text), so a chunk can say which words it speaks and when each
starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

from .backends.base import AudioPiece, SpeechBackend, SynthesisRequest
from .chunks import align, map_span
from .errors import TextTooLongError
from .growing_text import GrowingText
from .text import SENTENCE_END, clean_text, iter_segments
from .workers import ModelWorkers


def _respan(piece: AudioPiece, mapping: list[int], default_end: int) -> AudioPiece:
    """Map a piece's span and word marks from its segment to the whole text.

    A piece without a span gets the segment's. Word marks name a word by its first
    character, which :func:`align` maps one to one (a word never starts on whitespace).
    """
    if piece.text_span is None:
        span = (mapping[0], mapping[-1] + 1) if mapping else None
    else:
        span = map_span(piece.text_span, mapping, default_end)
    words = tuple((mapping[pos], offset) for pos, offset in piece.words if 0 <= pos < len(mapping))
    return AudioPiece(piece.audio, span, piece.waiting_for_text, words)


def _segment_request(request: SynthesisRequest, text: str) -> SynthesisRequest:
    """The request for one segment: same voice, speed, options and stop event."""
    return SynthesisRequest(
        text=text,
        voice=request.voice,
        speed=request.speed,
        stop=request.stop,
        options=request.options,
        growing_text=request.growing_text,
    )


async def _speak_segments(
    workers: ModelWorkers, request: SynthesisRequest, text: str, full: str, start: int
) -> AsyncIterator[AudioPiece]:
    """Segments of ``text``, which stands at ``start`` in ``full``, spoken in order."""
    cursor = start
    for segment in iter_segments(clean_text(text)):
        if request.stop.is_set():
            return
        mapping, cursor = align(segment, full, cursor)
        inner = workers.pull(_segment_request(request, segment))
        async with contextlib.aclosing(inner):
            async for piece in inner:
                yield _respan(piece, mapping, start + len(text))


async def whole_text_pieces(
    workers: ModelWorkers, request: SynthesisRequest
) -> AsyncIterator[AudioPiece]:
    """A complete (already cleaned) text, segment by segment."""
    async with contextlib.aclosing(
        _speak_segments(workers, request, request.text, request.text, 0)
    ) as pieces:
        async for piece in pieces:
            yield piece


def _check_length(text: GrowingText, max_chars: int) -> None:
    if len(text) > max_chars:
        raise TextTooLongError(f"text stream exceeded the limit of {max_chars} characters")


async def streamed_text_pieces(
    workers: ModelWorkers, request: SynthesisRequest, text: GrowingText, max_chars: int
) -> AsyncIterator[AudioPiece]:
    """One backend stream that reads ``text`` as it grows (``supports_text_stream``)."""
    request.growing_text = text
    async with contextlib.aclosing(workers.pull(_segment_request(request, ""))) as pieces:
        async for piece in pieces:
            _check_length(text, max_chars)
            if piece.waiting_for_text:
                await text.wait_for_news()
                _check_length(text, max_chars)
                continue
            yield piece


async def complete_sentences(
    text: GrowingText, max_chars: int | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Whole sentences of a growing text, each as soon as it is complete.

    A sentence is complete once the whitespace after its end mark has arrived (so
    "3.5" is not cut). Yields ``(sentence, offset)`` with the offset in the text; the
    rest follows when the text is closed. More than ``max_chars`` characters in total
    raise :class:`TextTooLongError`.
    """
    buffer = ""
    base = 0  # offset of buffer[0] in the text
    async for piece in text.new_text():
        if max_chars is not None:
            _check_length(text, max_chars)
        buffer += piece
        last = 0
        for match in SENTENCE_END.finditer(buffer):
            sentence = buffer[last : match.start()]
            if sentence.strip():
                yield sentence, base + last
            last = match.end()
        if last:
            buffer = buffer[last:]
            base += last
    if buffer.strip():
        yield buffer, base


async def sentence_pieces(
    workers: ModelWorkers, request: SynthesisRequest, text: GrowingText, max_chars: int
) -> AsyncIterator[AudioPiece]:
    """A growing text for a backend that takes whole strings: sentence by sentence."""
    async with contextlib.aclosing(complete_sentences(text, max_chars)) as sentences:
        async for sentence, offset in sentences:
            if request.stop.is_set():
                return
            inner = _speak_segments(workers, request, sentence, text.text, offset)
            async with contextlib.aclosing(inner):
                async for piece in inner:
                    yield piece


def text_pieces(
    workers: ModelWorkers, request: SynthesisRequest, text: GrowingText | None, max_chars: int
) -> AsyncIterator[AudioPiece]:
    """The right way for this text and backend (see the module docstring)."""
    backend: SpeechBackend = workers.backend
    if text is None:
        return whole_text_pieces(workers, request)
    if backend.supports_text_stream:
        return streamed_text_pieces(workers, request, text, max_chars)
    return sentence_pieces(workers, request, text, max_chars)


@contextlib.asynccontextmanager
async def growing_from(pieces: AsyncIterable[str]) -> AsyncIterator[tuple[GrowingText, list]]:
    """A :class:`GrowingText` fed from an async iterable of pieces (the engine's public API).

    A task appends the pieces and closes the text; an exception of the iterable is
    kept in the yielded list (the caller raises it) and closes the text too. The task
    is cancelled on exit.
    """
    text = GrowingText()
    failure: list[BaseException] = []

    async def feed() -> None:
        try:
            async for piece in pieces:
                text.append(piece)
        except Exception as exc:  # reported by the consumer
            failure.append(exc)
        finally:
            text.close()

    feeder = asyncio.create_task(feed(), name="tts-text-feed")
    try:
        yield text, failure
    finally:
        if not feeder.done():
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
