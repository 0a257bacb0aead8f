"""What the engine hands out: fixed-size PCM chunks with their time and the text they speak.

:class:`SpeechChunk` is what :meth:`TTSEngine.stream_chunks` yields. The text span comes
from the backend (VibeVoice knows exactly which tokens fed each latent's window; Piper
reports none, so the segment or sentence being spoken is used) and is carried through the
audio stages by :class:`SpanTimeline`, which maps output samples back to backend pieces.
Word starts travel the same way: a backend marks where each word starts in its pieces
(:mod:`.word_timing`), and the timeline places the marks on the output samples, so a
chunk lists the words that start in it with their time from the utterance's start.
:class:`ChunkAssembler` runs one utterance's pieces through those stages.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loguru import logger

from .audio import AudioPipeline
from .backends.base import AudioPiece, SpeechBackend
from .config import TTSConfig
from .controls import split_speed
from .word_timing import word_at


@dataclass(frozen=True)
class SpeechChunk:
    """One emitted chunk: PCM16 LE mono bytes, when it plays, and what it says.

    ``start_s``/``end_s`` are seconds from the start of the utterance's audio.
    ``text_span`` is the (start, end) character range of the utterance text (the
    cleaned text for a ``str``, the concatenated pieces for a stream) whose speech this
    chunk carries; ``text`` is that substring. Speech a model produces after it has read
    all the text has an empty span at the end of the text.

    ``words`` are the words whose speech starts in this chunk, in order, as
    ``(word, start_s)``: the word as it is in the utterance text (a run of
    non-whitespace, punctuation included) and its start in seconds from the start of
    the utterance's audio (``start_s <= t <= end_s``). Piper's are exact to a frame
    (duration predictor); VibeVoice's are window-level estimates (see
    :class:`~.word_timing.WindowWords`).
    """

    pcm: bytes
    start_s: float
    end_s: float
    text_span: tuple[int, int] | None
    text: str
    words: tuple[tuple[str, float], ...] = ()


class SpanTimeline:
    """Which text span each stretch of output samples came from.

    Backend pieces are stretched by speed and resampling before they are cut into
    chunks, so positions are mapped with the overall ratio (output samples per backend
    sample); stage delays of a few milliseconds are ignored. Word starts are mapped the
    same way, so they stay on the speech they were marked on whatever the speed.
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._marks: list[tuple[float, float, tuple[int, int] | None]] = []
        self._words: list[tuple[float, int]] = []  # (output sample, text position)
        self._in = 0.0

    def add(
        self,
        samples: int,
        span: tuple[int, int] | None,
        words: Sequence[tuple[int, int]] = (),
    ) -> None:
        """Record ``samples`` backend samples that speak ``span`` and start ``words``.

        ``words`` are (text position, backend sample within these samples) marks.
        """
        samples = max(0, samples)
        for pos, offset in words:
            at = (self._in + min(max(0, offset), samples)) * self.ratio
            self._words.append((at, pos))
        if samples == 0:
            return
        start = self._in * self.ratio
        self._in += samples
        self._marks.append((start, self._in * self.ratio, span))

    def take_words(self, end: float | None) -> list[tuple[float, int]]:
        """Word marks before output sample ``end`` (all for ``None``), oldest first; forgotten."""
        if end is None:
            taken, self._words = self._words, []
        else:
            taken = [w for w in self._words if w[0] < end]
            self._words = [w for w in self._words if w[0] >= end]
        return sorted(taken, key=lambda w: (w[0], w[1]))

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


class ChunkAssembler:
    """One utterance's backend pieces in, :class:`SpeechChunk` s out.

    Speed (what the backend does not apply natively, :func:`.controls.split_speed`),
    pitch, resampling to the output
    rate and the cut into ``chunk_ms`` chunks, with each chunk's time and text. With
    streaming off, the whole utterance comes out as one chunk at :meth:`finish`.
    ``text()`` returns the request text so far (spans index it).
    """

    def __init__(
        self,
        config: TTSConfig,
        backend: SpeechBackend,
        speed: float,
        pitch: float,
        text: Callable[[], str],
    ) -> None:
        _, stretch = split_speed(speed, backend.native_speed)
        self._pipeline = AudioPipeline(
            in_rate=backend.sample_rate,
            out_rate=config.sample_rate,
            chunk_samples=config.chunk_samples if config.streaming else None,
            speed=stretch,
            pitch=pitch,
        )
        self._timeline = SpanTimeline(config.sample_rate / backend.sample_rate / stretch)
        self._rate = config.sample_rate
        self._streaming = config.streaming
        self._text = text
        self._emitted = 0  # output samples handed out so far
        self._held: list[bytes] = []  # streaming off: the utterance until its end
        #: ``time.perf_counter()`` when the first chunk was handed out.
        self.first_chunk_at: float | None = None

    @property
    def samples_out(self) -> int:
        """Output samples produced so far."""
        return self._pipeline.samples_out

    def add(self, piece: AudioPiece) -> list[SpeechChunk]:
        """Process one backend piece; return the chunks now complete."""
        self._timeline.add(piece.audio.size, piece.text_span, piece.words)
        if piece.audio.size == 0:
            return []
        return self._hand_out(self._pipeline.push(piece.audio))

    def finish(self) -> list[SpeechChunk]:
        """Drain the audio stages; return the last chunks (the last one may be short).

        Words not handed out yet (marked at the very end, or past the last sample by
        rounding) go with the last chunk. Words marked after the last chunk was already
        handed out (a model that ended before it reached them) have no audio to go with
        and are dropped.
        """
        chunks = self._hand_out(self._pipeline.finish())
        if self._held:
            chunks.append(self._chunk(b"".join(self._held)))
            self._held.clear()
        rest = self._timeline.take_words(None)
        if rest and chunks:
            last = chunks[-1]
            words = last.words + self._words(rest, last.start_s, last.end_s)
            chunks[-1] = dataclasses.replace(last, words=words)
        elif rest:
            logger.debug(f"{len(rest)} word(s) marked after the last audio; not timed")
        return chunks

    def _hand_out(self, pcms: list[bytes]) -> list[SpeechChunk]:
        if not self._streaming:
            self._held.extend(pcms)
            return []
        return [self._chunk(pcm) for pcm in pcms]

    def _words(
        self, marks: list[tuple[float, int]], start_s: float, end_s: float
    ) -> tuple[tuple[str, float], ...]:
        """Marks as (word, seconds), each time kept inside its chunk."""
        text = self._text()
        return tuple(
            (word_at(text, pos), min(end_s, max(start_s, at / self._rate))) for at, pos in marks
        )

    def _chunk(self, pcm: bytes) -> SpeechChunk:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
        n = len(pcm) // 2
        span = self._timeline.span(self._emitted, self._emitted + n)
        text = self._text()
        start_s, end_s = self._emitted / self._rate, (self._emitted + n) / self._rate
        marks = self._timeline.take_words(self._emitted + n)
        chunk = SpeechChunk(
            pcm=pcm,
            start_s=start_s,
            end_s=end_s,
            text_span=span,
            text=text[span[0] : span[1]] if span else "",
            words=self._words(marks, start_s, end_s),
        )
        self._emitted += n
        return chunk
