"""Text checks and segmentation shared by every voice.

Decisions documented in the README:

* Empty or whitespace-only text is an error (:class:`EmptyTextError`, a ``ValueError``),
  not silent success: a caller that sends nothing to speak has a bug worth seeing.
* Text longer than ``max_text_chars`` is refused whole (:class:`TextTooLongError`),
  never silently truncated.
* Control characters are dropped and whitespace collapsed; everything else (non-Latin
  scripts, emoji) is passed to the voice, which speaks what it can.
* Long text is cut into segments of whole sentences, at most :data:`MAX_SEGMENT_CHARS`
  each, produced lazily, so a 20 000-character text streams in bounded memory.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from .errors import EmptyTextError, TextError, TextTooLongError

MAX_SEGMENT_CHARS = 400

_CONTROL = {"Cc", "Cf", "Cs", "Co", "Cn"}
#: A sentence ends at an end mark followed by whitespace, or at a blank line. Streamed
#: text is cut here only once the whitespace has arrived, so "3.5" is never cut.
SENTENCE_END = re.compile(r"(?<=[.!?;:。！？])\s+|\n{2,}")

__all__ = [
    "MAX_SEGMENT_CHARS",
    "SENTENCE_END",
    "EmptyTextError",
    "TextError",
    "TextTooLongError",
    "clean_piece",
    "clean_text",
    "iter_segments",
    "validate_text",
]


def clean_text(text: str) -> str:
    """NFC-normalise, drop control/format characters, collapse runs of spaces.

    Newlines survive (collapsed to at most two) because a blank line marks a paragraph.
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text)
    kept = []
    for ch in text:
        if ch in "\n\t":
            kept.append(ch)
        elif unicodedata.category(ch) in _CONTROL and ch not in "\u200d\ufe0f":
            kept.append(" ")
        else:
            kept.append(ch)
    text = "".join(kept)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_piece(piece: str) -> str:
    """Clean one piece of streamed text: control characters become spaces, nothing else.

    Unlike :func:`clean_text`, spaces are kept as they are: they join the words of
    separate pieces (LLM tokens carry their leading space).
    """
    return "".join(
        " " if (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\u200d") else ch
        for ch in unicodedata.normalize("NFC", piece)
    )


def validate_text(text: str, max_chars: int) -> str:
    """Clean ``text`` and enforce the limits; return the cleaned text."""
    if not isinstance(text, str):
        raise TextError(f"text must be a str, got {type(text).__name__}")
    if len(text) > max_chars:
        raise TextTooLongError(
            f"text has {len(text)} characters, more than the limit of {max_chars}; "
            "split it or raise max_text_chars"
        )
    cleaned = clean_text(text)
    if not cleaned:
        raise EmptyTextError("text is empty or only whitespace/control characters")
    return cleaned


def iter_segments(text: str, max_chars: int = MAX_SEGMENT_CHARS) -> Iterator[str]:
    """Yield whole-sentence segments of at most ``max_chars`` characters, lazily.

    Sentences are packed together up to the limit (fewer model calls, natural joins);
    a single sentence longer than the limit is cut at commas, then at spaces.
    """
    pending = ""
    for sentence in _iter_sentences(text):
        for piece in _split_long(sentence, max_chars):
            if pending and len(pending) + 1 + len(piece) > max_chars:
                yield pending
                pending = ""
            pending = f"{pending} {piece}" if pending else piece
    if pending:
        yield pending


def _iter_sentences(text: str) -> Iterator[str]:
    start = 0
    for match in SENTENCE_END.finditer(text):
        sentence = text[start : match.start()].strip()
        if sentence:
            yield sentence
        start = match.end()
    tail = text[start:].strip()
    if tail:
        yield tail


def _split_long(sentence: str, max_chars: int) -> Iterator[str]:
    if len(sentence) <= max_chars:
        yield sentence
        return
    current = ""
    for match in re.finditer(r"\S+\s*", sentence):
        word = match.group(0)
        if current and len(current) + len(word) > max_chars:
            yield current.strip()
            current = ""
        while len(word) > max_chars:  # one enormous "word": hard cut
            yield word[:max_chars]
            word = word[max_chars:]
        current += word
    if current.strip():
        yield current.strip()
