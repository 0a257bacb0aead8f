"""Token mode state: one :class:`TokenTurn` per turn, and the text frames it holds back.

In ``TextAggregationMode.TOKEN`` Pipecat calls ``run_tts`` once per LLM token, on the
processor's own task, one call after another. A model that conditions on the text so
far (VibeVoice-Realtime) speaks best and starts soonest when it sees the whole turn as
one growing text, so the service appends the tokens of a turn to one
:class:`~pipecat_vibevoice.engine.GrowingText` that a single engine request reads as it
grows. Everything the service keeps about such a turn lives in one :class:`TokenTurn`,
so a turn is dropped, cancelled or finished in one place.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import Frame, TTSTextFrame

from ...engine import GrowingText


class HeldText:
    """Frames held back until the audio that speaks their text has been produced.

    Pipecat emits a sentence's ``TTSTextFrame`` (what the assistant context records as
    said) as soon as the sentence's tokens are in, before it is spoken. Each text frame
    here gets the end offset of its text in the turn's text (the running total of the
    held texts, which Pipecat cut from the same tokens the engine reads); other frames
    share the offset of the text frame before them, so their order is kept.
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

    def drop(self) -> None:
        """Forget every held frame (the turn was interrupted: none of it was said)."""
        self.frames.clear()


class TokenTurn:
    """One token-mode turn (one audio context): its text, its speaker task, its held frames.

    The text is the one object the engine reads (no copy), appended to token by token
    and closed when the turn's text is complete. ``task`` speaks it into the audio
    context; it is set right after the turn is made, since the task needs the turn.
    """

    def __init__(self, context_id: str) -> None:
        self.context_id = context_id
        self.text = GrowingText()
        self.held = HeldText()
        self.task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """True once the turn's text is complete (no more tokens will be appended)."""
        return self.text.closed

    def append(self, token: str) -> None:
        """Add a token to the text the engine is reading."""
        self.text.append(token)

    def close(self) -> None:
        """The turn's text is complete: the engine speaks the rest and ends (idempotent)."""
        self.text.close()

    def __repr__(self) -> str:
        return f"TokenTurn({self.context_id[:8]}, {self.text!r}, {len(self.held.frames)} held)"
