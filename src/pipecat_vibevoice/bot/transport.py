"""Pipecat's FastAPI websocket transport with an output that barge-in can stop at once.

Pipecat's websocket output already paces audio at real time (one chunk per chunk
duration), so a client holds only a chunk or two of the bot's voice. But it keeps
sending until Pipecat confirms the user's turn (``vad_start_secs`` of speech, then the
interruption), and a client that does not understand our ``playback-pause`` — Pipecat's
own client SDKs, a phone — keeps talking over the user until then.

So the output here follows the speech gate's
:class:`~pipecat_vibevoice.pipeline.frames.PlaybackControlFrame`: at the first voiced
frames the audio not yet sent is **held** — nothing is dropped; if the onset was no
speech it is **released** and goes out as it was, if it was speech the interruption (or a
**drop**, when no interruption will come) discards it; Pipecat 1.14 would otherwise still
deliver the chunk being written. Any client then falls silent within the one or two
chunks it has buffered. A hold never outlasts :data:`MAX_HOLD_S`, so a lost release
cannot silence the bot for good.

The bot's word-timed text (``TTSTextFrame`` s with a presentation time, released by the
output's clock so that the assistant context records only what was heard) is held with
the audio: words due during a hold reach the context only if the hold is released, never
when it ends in an interruption — the user did not hear them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import WebSocket
from loguru import logger
from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame, TTSTextFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

from ..pipeline.frames import PlaybackControlFrame

#: The longest a hold lasts without a release, a drop or an interruption.
MAX_HOLD_S = 2.0


class HoldingOutputTransport(FastAPIWebsocketOutputTransport):
    """Pipecat's websocket output with a hold for barge-in (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._released = asyncio.Event()
        self._released.set()
        self._held_since: float | None = None
        self._generation = 0  # bumped by every interruption and drop
        self._held_words: list[Frame] = []  # word frames that came due during the hold
        self.holds = 0

    # -- the hold -------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the speech gate's playback control; an interruption ends any hold."""
        if isinstance(frame, InterruptionFrame):
            await self._end_hold(discard=True)
        elif isinstance(frame, PlaybackControlFrame):
            if frame.action == "hold":
                self._hold()
            elif frame.action == "release":
                await self._end_hold(discard=False)
            else:  # drop: what is queued is stale and no interruption will come
                await self._end_hold(discard=True)
                await self._drop_queued_audio()
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Keep the bot's words back while its audio is held (see the module docstring)."""
        if (
            self._held_since is not None
            and direction == FrameDirection.DOWNSTREAM
            and isinstance(frame, TTSTextFrame)
        ):
            self._held_words.append(frame)
            return
        await super().push_frame(frame, direction)

    async def _drop_queued_audio(self) -> None:
        """Discard the audio not sent yet, here and at the client, as an interruption would.

        Only this output is flushed: no interruption travels the pipeline.
        """
        interruption = InterruptionFrame()
        await self._handle_frame(interruption)
        await self._write_frame(interruption)

    def _hold(self) -> None:
        if self._held_since is None:
            self._held_since = time.monotonic()
            self.holds += 1
            self._released.clear()

    async def _end_hold(self, discard: bool) -> None:
        if discard:
            self._generation += 1
        if self._held_since is not None:
            held_ms = (time.monotonic() - self._held_since) * 1000
            logger.debug(f"{self}: hold ended after {held_ms:.0f} ms (discard={discard})")
        self._held_since = None
        self._released.set()
        words, self._held_words = self._held_words, []
        if not discard:
            for word in words:  # played after all: they reach the context now
                await super().push_frame(word)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Write a chunk unless it is held; a held chunk an interruption discards is dropped."""
        generation = self._generation
        if not self._released.is_set():
            try:
                await asyncio.wait_for(self._released.wait(), MAX_HOLD_S)
            except TimeoutError:
                logger.warning(f"{self}: no release after {MAX_HOLD_S}s of hold; playing on")
                await self._end_hold(discard=False)
        if generation != self._generation:
            return False  # discarded: neither sent nor passed on
        return await super().write_audio_frame(frame)


class VoiceBotTransport(FastAPIWebsocketTransport):
    """:class:`FastAPIWebsocketTransport` whose output is a :class:`HoldingOutputTransport`."""

    def __init__(self, websocket: WebSocket, params: FastAPIWebsocketParams) -> None:
        super().__init__(websocket, params)
        self._output = HoldingOutputTransport(
            self, self._client, self._params, name=self._output_name
        )
