"""Where an utterance takes its text from: windows of token ids, whole or still growing.

The generation loop reads text in windows of ``TEXT_WINDOW`` tokens (see
:mod:`.utterance`). A :class:`TokenSource` hands them out; it may not have the next
window yet when the text is still being typed or generated (streaming text input), and
says so with ``None`` instead of blocking, so the loop can report ``WAITING`` and the
model is never held by a slow text producer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TokenSource(Protocol):
    """Where the loop takes its text windows from."""

    def take(self, n: int) -> list[int] | None:
        """Up to ``n`` next token ids; ``[]`` when the text is finished; ``None`` to wait.

        Fewer than ``n`` ids only at the very end of the text.
        """
        ...


class FixedTokens:
    """A whole, known token sequence (tests, benchmarks, pre-tokenised input)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)
        self.position = 0

    def take(self, n: int) -> list[int] | None:
        window = self.ids[self.position : self.position + n]
        self.position += len(window)
        return window


#: Text → (token ids, character offsets), as a ``tokenizers`` encoding gives them.
Encoder = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


class TextTokenStream:
    """Growing text → token windows identical to tokenizing the whole text at once.

    BPE tokenisation of a prefix can differ from that of the whole text at the cut, so
    text is committed only up to a *safe cut*: a single space between two non-space
    characters. Qwen2's pre-tokenizer never lets a piece cross such a space from the
    left (the space starts the next word's piece), so tokenising committed pieces one by
    one gives exactly the whole text's tokens. At the end the rest is committed with the
    trailing newline the official processor appends (``text.strip() + "\\n"``).

    ``read`` returns ``(text_so_far, finished)``; it is the thread-safe text hand-over
    from the engine (``GrowingText.snapshot``), or a constant for a whole string.
    """

    def __init__(self, encode: Encoder, read: Callable[[], tuple[str, bool]]) -> None:
        self._encode = encode
        self._read = read
        self.ids: list[int] = []
        self.offsets: list[tuple[int, int]] = []
        self._committed = 0  # characters of text already tokenised
        self._start: int | None = None  # leading whitespace is dropped (strip)
        self._finished = False
        self.position = 0
        self.text = ""

    @classmethod
    def whole(cls, encode: Encoder, text: str) -> TextTokenStream:
        """A stream over a complete text."""
        return cls(encode, lambda: (text, True))

    def _commit(self, upto: int, suffix: str = "") -> None:
        piece = self.text[self._committed : upto] + suffix
        if piece:
            ids, offsets = self._encode(piece)
            base = self._committed
            self.ids.extend(ids)
            self.offsets.extend((base + s, base + e) for s, e in offsets)
        self._committed = upto

    def _refresh(self) -> None:
        if self._finished:
            return
        text, finished = self._read()
        self.text = text
        if self._start is None:
            stripped = len(text) - len(text.lstrip())
            if stripped == len(text) and not finished:
                return  # only whitespace so far
            self._start = stripped
            self._committed = stripped
        if finished:
            end = len(text.rstrip())
            self._finished = True
            if end > (self._start or 0):  # else: no speakable text at all
                # The rest goes with the newline the official processor appends, in one
                # piece (punctuation absorbs a following newline in Qwen2's split).
                self._commit(end, suffix="\n")
            return
        cut = _last_safe_cut(text, self._committed)
        if cut > self._committed:
            self._commit(cut)

    def take(self, n: int) -> list[int] | None:
        if len(self.ids) - self.position < n:
            self._refresh()
        available = len(self.ids) - self.position
        if available < n and not self._finished:
            return None
        window = self.ids[self.position : self.position + n]
        self.position += len(window)
        return window

    def char_span(self, start: int, end: int) -> tuple[int, int] | None:
        """Character range of the text covered by tokens ``[start, end)``."""
        if end <= start or start >= len(self.offsets):
            return None
        limit = len(self.text.rstrip())
        s = min(self.offsets[start][0], limit)
        e = min(max(o[1] for o in self.offsets[start:end]), limit)
        return (s, max(s, e))


def _last_safe_cut(text: str, after: int) -> int:
    """Index of the last space with non-space characters on both sides, past ``after``."""
    index = len(text) - 2
    while index > after:
        if text[index] == " " and not text[index - 1].isspace() and not text[index + 1].isspace():
            return index
        index -= 1
    return after
