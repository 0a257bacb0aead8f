"""What our TTS services share: word-timed text, refused requests, per-turn streams.

Both :class:`~.vibevoice.tts.VibeVoiceTTSService` (the engine in this process) and
:class:`~.remote.tts.RemoteTTSService` (a ``/v1/tts/stream`` server) receive audio in
chunks that say which words start in them, and speak a token-mode turn as one request.
The rules that follow from that are written once here:

* every chunk's words go to Pipecat's ``add_word_timestamps`` on the context's timeline
  (:class:`ContextClock`), so the output releases each word as it is heard;
* a request the voice refused (bad text, voice or control) is reported once and does
  not count towards Pipecat's "three silent contexts" rule;
* in sentence mode ``run_tts`` always completes its context inline;
* an interruption stops every interruptible turn, also one whose audio context Pipecat
  already dropped (after ``stop_frame_timeout_s`` without audio);
* a context renders at most ``render_ahead_secs`` of audio ahead of its playback
  (:meth:`WordTimedTTSService._pace`): audio rendered further ahead is mostly thrown
  away by the next barge-in, and on a busy box its CPU is taken from the conversations
  whose listeners are about to run dry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipecat.frames.frames import Frame, InterruptionFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.tts_service import TTSService


class TimedChunk(Protocol):
    """A chunk of audio with its place in its request and the words starting in it."""

    start_s: float
    end_s: float
    words: Iterable[tuple[str, float]]


@dataclass
class ContextClock:
    """Where an audio context's chunks fall on the listener's timeline.

    Word times must be seconds from the start of the context's audio as it plays. A
    chunk says them from the start of its own request, and one context may take
    several requests (the sentences of an LLM turn share one context) or wait for text
    mid-request (a slow LLM in token mode). The output transport plays chunks back to
    back while it has audio, and a chunk that arrives after the audio ran out plays at
    once: so a chunk starts at the end of the audio before it, or at the time elapsed
    since the context's first chunk if that is later (an underrun: the silence moves
    its words later, as it moves the audio).
    """

    #: ``time.perf_counter()`` when the context was opened (its first request or chunk).
    opened_at: float = field(default_factory=time.perf_counter)
    first_at: float | None = None  # time.perf_counter() of the context's first chunk
    audio_s: float = 0.0  # end of the context's audio so far on its timeline

    def place(self, chunk: TimedChunk, now: float) -> list[tuple[str, float]]:
        """Note ``chunk`` produced at ``now``; its words with times on the context's timeline."""
        if self.first_at is None:
            self.first_at, start = now, 0.0
        else:
            start = max(self.audio_s, now - self.first_at)
        self.audio_s = start + (chunk.end_s - chunk.start_s)
        return [(word, start + max(0.0, at - chunk.start_s)) for word, at in chunk.words]

    def ahead(self, now: float) -> float:
        """Seconds of the context's audio produced but not yet played at ``now``.

        Playback cannot start before a chunk exists, so this never overstates what the
        listener has buffered (a hold or a previous context still playing only make
        the real buffer larger): pacing on it can only err towards rendering early.
        """
        if self.first_at is None:
            return 0.0
        return self.audio_s - (now - self.first_at)


#: Default of ``render_ahead_secs``: enough for any model call under load (a Piper or
#: VibeVoice chunk takes tens of milliseconds), small next to a typical reply.
RENDER_AHEAD_SECS = 1.0


class WordTimedTTSService(TTSService):
    """A Pipecat ``TTSService`` whose audio comes with word times (see the module doc).

    Subclasses call :meth:`_place_words` for each chunk and :meth:`_report_words` after
    its audio frame, mark refused requests with :meth:`_refused`, and implement
    :meth:`_turn_ids` and :meth:`_cancel_turn` for their token-mode turns.
    """

    def __init__(
        self, *, render_ahead_secs: float | None = RENDER_AHEAD_SECS, **kwargs: Any
    ) -> None:
        """Create the service.

        Args:
            render_ahead_secs: Most audio a context renders ahead of its playback
                (None: as fast as the model goes).
            **kwargs: Pipecat ``TTSService`` arguments.

        """
        # Word times replace Pipecat's whole-sentence text frames.
        kwargs["push_text_frames"] = False
        super().__init__(**kwargs)
        if render_ahead_secs is not None and render_ahead_secs <= 0:
            raise ValueError(f"render_ahead_secs must be > 0, got {render_ahead_secs}")
        self._render_ahead_secs = render_ahead_secs
        self._refused_contexts: set[str] = set()
        self._clocks: dict[str, ContextClock] = {}

    # -- word times -----------------------------------------------------------------------

    def _clock(self, context_id: str) -> ContextClock:
        """The context's clock, opened now if this is the first time it is asked for."""
        return self._clocks.setdefault(context_id, ContextClock())

    def _place_words(self, context_id: str, chunk: TimedChunk) -> list[tuple[str, float]]:
        """The chunk's words on its context's timeline (call when the chunk arrives)."""
        return self._clock(context_id).place(chunk, time.perf_counter())

    async def _report_words(self, context_id: str, words: list[tuple[str, float]]) -> None:
        """Hand the words to Pipecat after their audio frame, so they follow it."""
        if words:
            await self.add_word_timestamps(words, context_id)

    async def _pace(self, context_id: str) -> None:
        """Wait before the next model call while the context is far enough ahead.

        Call it between chunks of a request. It sleeps until at most
        ``render_ahead_secs`` of the context's audio is unplayed
        (:meth:`ContextClock.ahead`); an interruption cancels the sleep with the task.
        """
        clock = self._clocks.get(context_id)
        if clock is None or self._render_ahead_secs is None:
            return
        excess = clock.ahead(time.perf_counter()) - self._render_ahead_secs
        if excess > 0:
            await asyncio.sleep(excess)

    # -- refused requests ----------------------------------------------------------------

    def _refused(self, context_id: str) -> None:
        """The voice refused this context's request; it was reported with its cause."""
        self._refused_contexts.add(context_id)

    async def _record_context_audio_outcome(self, context_id: str, received_audio: bool) -> None:
        """Do not count a context whose request was refused as a silent service.

        Pipecat writes a TTS off after 3 silent contexts in a row, to catch providers
        that fail without saying so. A refused request was already reported with its
        cause and says nothing about the voice's health, so it must not count
        (failures still do).
        """
        if context_id in self._refused_contexts:
            self._refused_contexts.discard(context_id)
            if not received_audio:
                return
        await super()._record_context_audio_outcome(context_id, received_audio)

    async def tts_process_generator(
        self, context_id: str, generator: AsyncGenerator[Frame | None, None]
    ) -> None:
        """Route ``run_tts`` output; in sentence mode the context is always complete after it.

        The base decides from "did this call yield audio" whether ``run_tts`` works
        inline (then it closes the context at the end of the turn) or hands off to a
        receive loop (then it waits for the service to close it). Our sentence path is
        always inline, also when a sentence failed and yielded only an ErrorFrame;
        without this the failed context would hold the next utterance for
        ``stop_frame_timeout_s`` (3 s).
        """
        await super().tts_process_generator(context_id, generator)
        if not self._is_streaming_tokens:
            self._is_yielding_frames_synchronously = True

    # -- turns and interruptions ---------------------------------------------------------

    def _turn_ids(self) -> list[str]:
        """The contexts with an open token-mode turn."""
        raise NotImplementedError

    async def _cancel_turn(self, context_id: str) -> None:
        """Stop the turn speaking ``context_id`` (no-op if there is none)."""
        raise NotImplementedError

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Stop the interrupted context's turn (token mode).

        In sentence mode the request is already stopped: the interruption cancelled
        the task running ``run_tts``.
        """
        self._refused_contexts.discard(context_id)  # interrupted contexts are not counted
        self._clocks.pop(context_id, None)
        await self._cancel_turn(context_id)

    async def on_audio_context_completed(self, context_id: str) -> None:
        """Forget the context's clock: audio that comes later opens a fresh context.

        That happens after ``stop_frame_timeout_s`` without audio (a slow LLM); the
        base then times the new context's words from its own first audio.
        """
        self._clocks.pop(context_id, None)

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection):
        """Also stop turns whose audio context the base no longer lists.

        The base calls :meth:`on_audio_context_interrupted` only for the contexts it
        still holds; one that went quiet for ``stop_frame_timeout_s`` (a slow LLM) is
        gone from it while its turn is still open. No interruptible turn may keep the
        voice busy; uninterruptible contexts survive the interruption and keep speaking.
        """
        await super()._handle_interruption(frame, direction)
        for context_id in self._turn_ids():
            context = self._tts_contexts.get(context_id)
            if context is None or context.interruptible:
                await self._cancel_turn(context_id)
        for context_id in list(self._clocks):
            if not self.audio_context_available(context_id):
                self._clocks.pop(context_id)
