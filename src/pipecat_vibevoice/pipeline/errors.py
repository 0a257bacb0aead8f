"""Tell the user, out loud, when a stage of their turn failed.

Pipecat reports a processor's error with an ``ErrorFrame`` that travels *upstream* to
the pipeline's source (RTVI forwards it to the client as an ``error`` message), but
nothing is *said*: a voice user hears silence and does not know to repeat. This
processor sits upstream of the recognizer and the LLM, sees their error frames go by,
and queues a short spoken apology downstream (through the LLM, to the TTS). Errors of
other processors — the TTS itself — are only passed on: speaking about a failing voice
would fail again.
"""

from __future__ import annotations

import time
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

STT_FAILED = "Sorry, I didn't catch that. Could you say it again?"
LLM_FAILED = "Sorry, I couldn't come up with an answer just now. Please ask me again."


class ErrorAnnouncer(FrameProcessor):
    """Speaks ``message`` when a watched processor reports a (non-fatal) error."""

    def __init__(self, *, min_interval_secs: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._messages: dict[int, str] = {}
        self._min_interval = min_interval_secs
        self._last_spoken = float("-inf")
        self.announced = 0

    def watch(self, processor: FrameProcessor, message: str) -> None:
        """Announce ``message`` when ``processor`` pushes an error."""
        self._messages[id(processor)] = message

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass every frame on; answer watched upstream errors with a spoken apology."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if not isinstance(frame, ErrorFrame) or direction != FrameDirection.UPSTREAM:
            return
        message = self._messages.get(id(frame.processor))
        now = time.monotonic()
        if message is None or frame.fatal or now - self._last_spoken < self._min_interval:
            return
        self._last_spoken = now
        self.announced += 1
        logger.info(f"{self}: telling the user that {frame.processor} failed")
        await self.push_frame(TTSSpeakFrame(message), FrameDirection.DOWNSTREAM)
