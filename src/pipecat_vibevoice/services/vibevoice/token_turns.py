"""Token mode state: one :class:`TokenTurn` per turn.

In ``TextAggregationMode.TOKEN`` Pipecat calls ``run_tts`` once per LLM token, on the
processor's own task, one call after another. A model that conditions on the text so
far (VibeVoice-Realtime) speaks best and starts soonest when it sees the whole turn as
one growing text, so the service appends the tokens of a turn to one
:class:`~pipecat_vibevoice.engine.GrowingText` that a single engine request reads as it
grows. Everything the service keeps about such a turn lives in one :class:`TokenTurn`,
so a turn is dropped, cancelled or finished in one place.

Nothing is held back for the text: the engine's chunks carry the words that start in
them, and the service reports those as word timestamps (see :mod:`.tts`), so the
turn's text reaches the context word by word as it is played.
"""

from __future__ import annotations

import asyncio

from ...engine import GrowingText


class TokenTurn:
    """One token-mode turn (one audio context): its text and its speaker task.

    The text is the one object the engine reads (no copy), appended to token by token
    and closed when the turn's text is complete. ``task`` speaks it into the audio
    context; it is set right after the turn is made, since the task needs the turn.
    """

    def __init__(self, context_id: str) -> None:
        self.context_id = context_id
        self.text = GrowingText()
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
        return f"TokenTurn({self.context_id[:8]}, {self.text!r})"
