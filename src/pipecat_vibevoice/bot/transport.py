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

Pipecat's own pacing keeps the client one chunk ahead and, when a write comes late,
restarts its clock from then: every event-loop hiccup longer than a chunk is a gap the
listener hears. The output here paces against the client's playout instead
(:class:`PlayoutLead`): it keeps the client ahead by a lead that starts at one chunk
and grows with the lateness it has seen lately (up to :data:`MAX_LEAD_S`), like a
jitter buffer. A busy server so trades a little barge-in time (a plain client plays its
lead) for no gaps; an idle one keeps the short lead.

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
#: The client's playout lead: at least this much audio ahead of its playback (one 40 ms
#: chunk; a plain client's barge-in plays it out: 80 ms put its p95 at 168-174 ms, over
#: the 150 ms goal, against 143 ms with 40; at 8 conversations 40 ms had no underruns
#: in 5 runs, the lateness it learns doing the rest)...
BASE_LEAD_S = 0.04
#: ...growing with recent lateness up to this (a plain client's barge-in pays it).
MAX_LEAD_S = 0.16
#: How fast the memory of a late write fades (seconds for the excess lead to halve).
LATENESS_HALF_LIFE_S = 10.0
#: A client dry for longer than this was waiting for the bot to speak, not for us.
MAX_LATE_GAP_S = 0.5


class PlayoutLead:
    """Where the client's playout stands, and how far ahead of it to send.

    ``ends_at`` is when the audio sent so far finishes playing at the client, assuming
    it plays chunks back to back from their arrival. The lead is :data:`BASE_LEAD_S`
    plus twice the worst lateness seen recently (a write that found the client already
    dry, or a timer that woke late), decaying with :data:`LATENESS_HALF_LIFE_S`, capped
    at :data:`MAX_LEAD_S`.
    """

    def __init__(self) -> None:
        self.ends_at = 0.0
        self._late = 0.0
        self._late_at = 0.0

    def reset(self) -> None:
        """The client dropped what it had (an interruption)."""
        self.ends_at = 0.0

    def lateness(self, now: float) -> float:
        """The recent worst lateness, decayed to ``now``."""
        return self._late * 0.5 ** ((now - self._late_at) / LATENESS_HALF_LIFE_S)

    def note_late(self, seconds: float, now: float) -> None:
        if seconds > self.lateness(now):
            self._late, self._late_at = seconds, now

    def target(self, now: float) -> float:
        """Seconds of audio the client should hold ahead of its playback."""
        return min(MAX_LEAD_S, BASE_LEAD_S + 2 * self.lateness(now))

    def sent(self, seconds: float, now: float) -> float:
        """A chunk of ``seconds`` went out at ``now``; returns how long to wait before the next."""
        if self.ends_at and 0 < now - self.ends_at < MAX_LATE_GAP_S:
            self.note_late(now - self.ends_at, now)  # the client ran dry before it
        self.ends_at = max(self.ends_at, now) + seconds
        return max(0.0, self.ends_at - now - self.target(now))


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
        self.playout = PlayoutLead()
        self._chunk_s = 0.0

    # -- the hold -------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the speech gate's playback control; an interruption ends any hold."""
        if isinstance(frame, InterruptionFrame):
            await self._end_hold(discard=True)
            self.playout.reset()
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
        self.playout.reset()

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
        # The client drained during the hold by our choice, not because a write came
        # late: start its playout afresh rather than learn a lateness from it.
        self.playout.reset()
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
        channels = max(1, self._params.audio_out_channels)
        self._chunk_s = len(frame.audio) / (2 * channels * self.sample_rate)
        return await super().write_audio_frame(frame)

    async def _write_audio_sleep(self) -> None:
        """Pace against the client's playout with an adaptive lead (see :class:`PlayoutLead`)."""
        now = time.monotonic()
        wait = self.playout.sent(self._chunk_s, now)
        if wait > 0:
            await asyncio.sleep(wait)
            woke = time.monotonic()
            self.playout.note_late(woke - now - wait, woke)


class VoiceBotTransport(FastAPIWebsocketTransport):
    """:class:`FastAPIWebsocketTransport` whose output is a :class:`HoldingOutputTransport`."""

    def __init__(self, websocket: WebSocket, params: FastAPIWebsocketParams) -> None:
        super().__init__(websocket, params)
        self._output = HoldingOutputTransport(
            self, self._client, self._params, name=self._output_name
        )
