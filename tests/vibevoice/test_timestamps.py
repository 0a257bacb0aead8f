"""Engine helpers behind phrase timestamps and sentence-wise streamed text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pipecat_vibevoice.engine.chunks import (
    SpanTimeline,
    align,
    iter_stream_sentences,
    map_span,
)
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


async def pieces(*parts: str) -> AsyncIterator[str]:
    for part in parts:
        yield part


async def test_stream_sentences_cut_only_at_complete_sentence_ends() -> None:
    collected: list[str] = []
    got = [
        s
        async for s in iter_stream_sentences(
            pieces("It costs 3", ".5 euros. Fine", "! Last one without end"), collected
        )
    ]
    assert got == [("It costs 3.5 euros.", 0), ("Fine!", 20), ("Last one without end", 26)]
    assert "".join(collected) == "It costs 3.5 euros. Fine! Last one without end"


async def test_stream_sentences_enforce_the_length_limit() -> None:
    with pytest.raises(TextTooLongError):
        async for _ in iter_stream_sentences(pieces("a" * 30, "b" * 30), [], max_chars=50):
            pass
