"""Engine helpers behind phrase timestamps and sentence-wise streamed text."""

from __future__ import annotations

import asyncio

import pytest

from pipecat_vibevoice.engine import GrowingText
from pipecat_vibevoice.engine.chunks import SpanTimeline, align, map_span
from pipecat_vibevoice.engine.sources import complete_sentences
from pipecat_vibevoice.engine.text import TextTooLongError


def test_align_maps_collapsed_whitespace_back_to_the_text() -> None:
    text = "First sentence here.\n\nSecond one!  And third."
    segment = "First sentence here. Second one!"  # what iter_segments packs
    mapping, after = align(segment, text, 0)
    assert map_span((0, 5), mapping, len(text)) == (0, 5)
    span = map_span((21, 32), mapping, len(text))
    assert text[span[0] : span[1]] == "Second one!"
    assert map_span((32, 32), mapping, len(text)) == (after, after) == (33, 33)
    rest, _ = align("And third.", text, after)
    assert text[rest[0] : rest[-1] + 1] == "And third."


def test_timeline_unions_spans_and_scales_positions() -> None:
    timeline = SpanTimeline(ratio=2.0)  # e.g. 12 kHz model audio, 24 kHz out
    timeline.add(100, (0, 5))
    timeline.add(100, (6, 10))
    timeline.add(100, (10, 10))  # speech after the text: empty span at its end
    assert timeline.span(0, 100) == (0, 5)
    assert timeline.span(150, 250) == (0, 10)
    assert timeline.span(400, 600) == (10, 10)
    assert timeline.span(600, 700) == (10, 10)  # resampler tail past every mark


async def sentences_of(*parts: str, max_chars: int | None = None) -> list[tuple[str, int]]:
    """Sentences of a growing text fed piece by piece, each piece after the last was read."""
    text = GrowingText()
    got = []
    sentences = complete_sentences(text, max_chars)
    feed = iter(parts)

    async def producer() -> None:
        for part in feed:
            text.append(part)
            await asyncio.sleep(0)
        text.close()

    task = asyncio.create_task(producer())
    try:
        async for sentence in sentences:
            got.append(sentence)
    finally:
        task.cancel()
    assert text.text == "".join(parts)
    return got


async def test_stream_sentences_cut_only_at_complete_sentence_ends() -> None:
    got = await sentences_of("It costs 3", ".5 euros. Fine", "! Last one without end")
    assert got == [("It costs 3.5 euros.", 0), ("Fine!", 20), ("Last one without end", 26)]


async def test_stream_sentences_enforce_the_length_limit() -> None:
    with pytest.raises(TextTooLongError):
        await sentences_of("a" * 30, "b" * 30, max_chars=50)
