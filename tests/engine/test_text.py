"""Text checks and lazy segmentation."""

from __future__ import annotations

import types

import pytest

from pipecat_vibevoice.engine import EmptyTextError, TextTooLongError
from pipecat_vibevoice.engine.text import (
    MAX_SEGMENT_CHARS,
    clean_text,
    iter_segments,
    validate_text,
)


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n", "\x00\x07\u200b"])
def test_empty_or_invisible_text_is_refused(text: str) -> None:
    with pytest.raises(EmptyTextError):
        validate_text(text, max_chars=100)


def test_too_long_text_is_refused_not_truncated() -> None:
    with pytest.raises(TextTooLongError, match="limit of 10"):
        validate_text("x" * 11, max_chars=10)


def test_control_characters_are_dropped_and_scripts_kept() -> None:
    assert clean_text("Hi\x00 there\x1b!  日本語 🎉") == "Hi there ! 日本語 🎉"


def test_segments_are_lazy_bounded_and_lossless() -> None:
    sentence = "This sentence has exactly eight words in it. "
    text = sentence * 500  # ~22 000 characters
    segments = iter_segments(text.strip())
    assert isinstance(segments, types.GeneratorType)
    collected = list(segments)
    assert all(len(s) <= MAX_SEGMENT_CHARS for s in collected)
    assert " ".join(collected).split() == text.split()


def test_a_sentence_longer_than_a_segment_is_cut_at_words() -> None:
    words = ["word"] * 300
    segments = list(iter_segments(" ".join(words)))
    assert len(segments) > 1
    assert sum(len(s.split()) for s in segments) == 300
