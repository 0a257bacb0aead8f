"""Phrase timestamps and streamed-text helpers of the engine.

:class:`SpeechChunk` is what :meth:`TTSEngine.stream_chunks` yields: the PCM of one
chunk with its place in time and the text it speaks. The text span comes from the
backend (VibeVoice knows exactly which tokens fed each latent's window; Piper reports
none, so the segment or sentence being spoken is used) and is carried through the
audio stages by :class:`SpanTimeline`, which maps output samples back to backend pieces.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from .text import TextTooLongError


@dataclass(frozen=True)
class SpeechChunk:
    """One emitted chunk: PCM16 LE mono bytes, when it plays, and what it says.

    ``start_s``/``end_s`` are seconds from the start of the utterance's audio.
    ``text_span`` is the (start, end) character range of the utterance text (the
    cleaned text for a ``str``, the concatenated pieces for a stream) whose speech this
    chunk carries; ``text`` is that substring. Speech a model produces after it has read
    all the text has an empty span at the end of the text.
    """

    pcm: bytes
    start_s: float
    end_s: float
    text_span: tuple[int, int] | None
    text: str


class SpanTimeline:
    """Which text span each stretch of output samples came from.

    Backend pieces are stretched by speed and resampling before they are cut into
    chunks, so positions are mapped with the overall ratio (output samples per backend
    sample); stage delays of a few milliseconds are ignored.
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._marks: list[tuple[float, float, tuple[int, int] | None]] = []
        self._in = 0.0

    def add(self, samples: int, span: tuple[int, int] | None) -> None:
        """Record ``samples`` backend samples that speak ``span``."""
        if samples <= 0:
            return
        start = self._in * self.ratio
        self._in += samples
        self._marks.append((start, self._in * self.ratio, span))

    def span(self, start: int, end: int) -> tuple[int, int] | None:
        """Union of the spans under output samples ``[start, end)``; forgets older marks.

        Empty spans (speech after the text) count only when nothing else is there.
        """
        hits = [m[2] for m in self._marks if m[0] < end and m[1] > start and m[2] is not None]
        while len(self._marks) > 1 and self._marks[0][1] <= start:  # keep the last one
            self._marks.pop(0)
        if not hits and self._marks and end > self._marks[-1][1]:
            # Audio past every mark (resampler/stretch tail): the last known span.
            last = [m[2] for m in self._marks if m[2] is not None]
            hits = last[-1:]
        full = [h for h in hits if h[1] > h[0]]
        chosen = full or hits
        if not chosen:
            return None
        return (min(h[0] for h in chosen), max(h[1] for h in chosen))


def align(segment: str, text: str, cursor: int) -> tuple[list[int], int]:
    """Positions in ``text`` (from ``cursor`` on) of each character of ``segment``.

    Segments are the text with whitespace runs collapsed (sentences are joined by one
    space), so whitespace in the segment matches a run of whitespace in the text.
    Returns the mapping and the position after the segment.
    """
    mapping: list[int] = []
    j = cursor
    while j < len(text) and text[j].isspace():
        j += 1
    for ch in segment:
        if ch.isspace():
            mapping.append(min(j, len(text)))
            while j < len(text) and text[j].isspace():
                j += 1
            continue
        if j >= len(text) or text[j] != ch:
            found = text.find(ch, j)
            j = found if found >= 0 else j
        mapping.append(min(j, len(text)))
        j += 1
    return mapping, min(j, len(text))


def map_span(
    span: tuple[int, int] | None, mapping: list[int], end_of_text: int
) -> tuple[int, int] | None:
    """A span in segment coordinates → text coordinates via :func:`align`'s mapping."""
    if span is None or not mapping:
        return None
    s, e = span
    if s >= len(mapping):  # an empty span at the end of the segment
        start = min(mapping[-1] + 1, end_of_text)
    else:
        start = mapping[max(0, s)]
    stop = mapping[min(e, len(mapping)) - 1] + 1 if e > 0 else start
    return (start, max(start, stop))


#: A sentence end (the engine's rule in ``text.py``): end mark + whitespace, or a blank line.
_CUT = re.compile(r"(?<=[.!?;:。！？])\s+|\n{2,}")


async def iter_stream_sentences(
    pieces: AsyncIterable[str], collected: list[str], max_chars: int | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Whole sentences of a text stream, each as soon as it is complete.

    A sentence is complete once the whitespace after its end mark has arrived (so
    "3.5" is not cut). Yields ``(sentence, offset)`` with the offset in the
    concatenated text; the rest is flushed when the stream ends. Every piece is also
    appended to ``collected`` so the caller can report text spans. More than
    ``max_chars`` characters in total raise :class:`TextTooLongError`.
    """
    buffer = ""
    total = 0
    base = 0  # offset of buffer[0] in the concatenated text
    async for piece in pieces:
        if not isinstance(piece, str):
            raise TypeError(f"text stream pieces must be str, got {type(piece).__name__}")
        total += len(piece)
        if max_chars is not None and total > max_chars:
            raise TextTooLongError(f"text stream exceeded the limit of {max_chars} characters")
        collected.append(piece)
        buffer += piece
        last = 0
        for match in _CUT.finditer(buffer):
            sentence = buffer[last : match.start()]
            if sentence.strip():
                yield sentence, base + last
            last = match.end()
        if last:
            buffer = buffer[last:]
            base += last
    if buffer.strip():
        yield buffer, base
