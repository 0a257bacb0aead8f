"""Speech recognition while the user speaks: faster-whisper on the growing utterance.

Stock ``WhisperSTTService`` starts transcribing when VAD reports the end of speech
(``stop_secs`` later), so a ~0.3-0.5 s transcription sits entirely on the critical
path. Here:

* the utterance buffer starts with a short pre-roll (VAD confirms speech late);
* every ``interim_secs`` of new speech the whole buffer is transcribed at low
  priority and shown to the client as an interim transcript;
* at the *probable* end of speech (a few quiet Silero windows, well before
  ``stop_secs``) the final transcript is started speculatively; when VAD confirms the
  stop it is usually ready. If the user speaks again it is dropped.
* the turn then ends at once if it sounds finished, after ``short_turn_pause_secs``
  if it is only a few words ("Hello there."), else after ``max_pause_secs`` of
  silence (see :mod:`.turns`); a resumed sentence stays one turn, one answer.

Exactly one finalized :class:`TranscriptionFrame` is pushed per user turn.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.time import time_now_iso8601

from ..engine.audio import pcm16_to_float
from .frames import ProbableSpeechEndFrame, SpeechOnsetFrame, SpeechResumedFrame
from .transcriber import Transcriber, Transcript
from .turns import smart_turn_probability, text_sounds_finished

#: Whisper's window; longer turns are finalized when they reach it.
MAX_TURN_SECS = 28.0
#: Audio (beyond ``stop_secs``) a speculative transcript may miss and still be used:
#: the quiet windows before it started plus scheduling jitter.
SPECULATION_SLACK_SECS = 0.25


class _Speculation:
    """A final transcript started before the end of speech was confirmed.

    ``covered_bytes`` is how much of the utterance buffer it was given; ``valid`` is
    cleared when it is dropped (speech resumed, or the turn ended).
    """

    def __init__(self, covered_bytes: int, task: asyncio.Task) -> None:
        self.covered_bytes = covered_bytes
        self.task = task
        self.valid = True


class StreamingWhisperSTT(FrameProcessor):
    """Incremental faster-whisper recognizer that also decides the end of the turn."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        turn_session: Any | None = None,
        sample_rate: int = 16000,
        interim_secs: float = 1.0,
        stop_secs: float = 0.2,
        max_pause_secs: float = 0.9,
        preroll_secs: float = 0.5,
        first_preroll_secs: float = 1.5,
        onset_hold_secs: float = 0.5,
        short_turn_words: int = 3,
        short_turn_pause_secs: float = 0.6,
        min_tail_confidence: float = 0.4,
        user_id: str = "user",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._transcriber = transcriber
        self._turn_session = turn_session
        self._bytes_per_sec = sample_rate * 2
        self._interim_bytes = int(interim_secs * self._bytes_per_sec)
        self._stop_secs = stop_secs
        self._max_pause = max_pause_secs
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._preroll_max = int(preroll_secs * self._bytes_per_sec)
        # Until the stream's first speech, the pre-roll reaches back to its start: a client
        # that starts sending mid-word (Pipecat's browser SDK sends nothing before the
        # first non-zero microphone sample) gets no silence before its first word, and
        # Silero, with no audio before it, confirms such a word late or not at all.
        self._first_preroll_max = int(first_preroll_secs * self._bytes_per_sec)
        self._heard_speech = False
        self._user_id = user_id
        self._buffer: bytearray | None = None  # the utterance; None between turns
        self._speaking = False
        self._last_interim_at = 0  # buffer length when the last interim was started
        self._interim_task: asyncio.Task | None = None
        self._speculation: _Speculation | None = None
        self._finalize_task: asyncio.Task | None = None
        self._onset_at: float | None = None
        self._onset_hold = onset_hold_secs
        self._short_turn_words = short_turn_words
        self._short_turn_pause = short_turn_pause_secs
        self._min_tail_confidence = min_tail_confidence
        self.turns = 0

    # -- frames ---------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Buffer user audio and react to the speech gate's and VAD's signals."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self._on_audio(frame.audio)
        elif isinstance(frame, SpeechOnsetFrame):
            self._onset_at = time.monotonic()
        elif isinstance(frame, ProbableSpeechEndFrame):
            self._start_speculation()
        elif isinstance(frame, SpeechResumedFrame):
            self._drop_speculation()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._on_speech_started()
            await self.push_frame(frame, direction)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            await self.push_frame(frame, direction)
            if self._buffer is not None:
                await self._restart_finalize(frame.stop_secs, "stt-finalize")
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._cancel_work()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _on_audio(self, audio: bytes) -> None:
        """Keep audio as pre-roll between turns; within one, buffer it and transcribe."""
        if self._buffer is None:
            self._keep_preroll(audio)
            return
        self._buffer.extend(audio)
        if len(self._buffer) >= MAX_TURN_SECS * self._bytes_per_sec and self._speaking:
            logger.warning(f"{self}: utterance reached {MAX_TURN_SECS:.0f}s, ending the turn")
            self._speaking = False
            await self._restart_finalize(0.0, "stt-cut")
            return
        self._maybe_start_interim()

    def _keep_preroll(self, audio: bytes) -> None:
        """Remember the last ``preroll_secs`` of audio (VAD confirms speech late).

        Before the stream's first speech: the last ``first_preroll_secs`` (see __init__).
        """
        self._preroll.append(audio)
        self._preroll_bytes += len(audio)
        limit = self._preroll_max if self._heard_speech else self._first_preroll_max
        while self._preroll_bytes > limit and len(self._preroll) > 1:
            self._preroll_bytes -= len(self._preroll.popleft())

    def _on_speech_started(self) -> None:
        """Open the turn (pre-roll first), or carry on the one a pause interrupted."""
        self._speaking = True
        self._heard_speech = True
        self._onset_at = None
        self._drop_speculation()
        if self._finalize_task is not None:
            # The user went on after a pause: same turn, one answer.
            self._finalize_task.cancel()
            self._finalize_task = None
            logger.debug(f"{self}: speech resumed within the turn")
        if self._buffer is None:
            self._buffer = bytearray(b"".join(self._preroll))
            self._preroll.clear()
            self._preroll_bytes = 0
            self._last_interim_at = len(self._buffer)

    async def _cancel_work(self) -> None:
        """Stop every transcription in flight (the pipeline is ending)."""
        await self._cancel_finalize()
        if self._interim_task is not None:
            await self.cancel_task(self._interim_task)
            self._interim_task = None
        self._drop_speculation()

    # -- transcription ------------------------------------------------------------------

    def _buffered_audio(self) -> np.ndarray:
        """The utterance so far as float32, for the transcriber."""
        return pcm16_to_float(self._buffer or b"")

    def _maybe_start_interim(self) -> None:
        """Start an interim transcript once ``interim_secs`` of new speech arrived.

        Only one at a time, and none while a speculative final one runs.
        """
        if (
            not self._interim_bytes
            or not self._speaking
            or self._interim_task is not None
            or self._speculation is not None
            or len(self._buffer or b"") - self._last_interim_at < self._interim_bytes
        ):
            return
        self._last_interim_at = len(self._buffer or b"")
        self._interim_task = self.create_task(
            self._push_interim_transcript(self._buffered_audio()), "stt-interim"
        )

    async def _push_interim_transcript(self, audio: np.ndarray) -> None:
        """Transcribe at interim priority; show it unless the turn moved on meanwhile."""
        buffer = self._buffer
        try:
            text = (await self._transcriber.transcribe(audio, Transcriber.INTERIM)).text
            if text and buffer is self._buffer and self._finalize_task is None:
                await self.push_frame(
                    InterimTranscriptionFrame(
                        text=text, user_id=self._user_id, timestamp=time_now_iso8601()
                    )
                )
        except Exception as exc:
            logger.warning(f"{self}: interim transcription failed: {exc!r}")
        finally:
            self._interim_task = None

    def _start_speculation(self) -> None:
        """Start the final transcript at the probable end of speech, before VAD's stop."""
        if self._buffer is None:
            return
        self._drop_speculation()
        audio = self._buffered_audio()
        task = self.create_task(
            self._transcriber.transcribe(audio, Transcriber.FINAL), "stt-speculative"
        )
        self._speculation = _Speculation(len(self._buffer), task)

    def _drop_speculation(self) -> None:
        """Forget the speculative transcript: speech went on, or the turn is over."""
        spec, self._speculation = self._speculation, None
        if spec is not None:
            spec.valid = False
            if not spec.task.done():
                spec.task.cancel()

    def _speculation_covers_speech(self, spec: _Speculation) -> bool:
        """Whether a speculative transcript saw all of the speech VAD heard.

        It was started a couple of quiet windows into the pause; if VAD's stop came
        much more than ``stop_secs`` of audio later, the user spoke on softly (not
        loud enough to cancel it) and its text misses words.
        """
        after_spec = len(self._buffer or b"") - spec.covered_bytes
        return after_spec <= (self._stop_secs + SPECULATION_SLACK_SECS) * self._bytes_per_sec

    # -- the end of the turn ------------------------------------------------------------

    async def _restart_finalize(self, silent_secs: float, name: str) -> None:
        """Replace any pending finalization by one for silence that began ``silent_secs`` ago."""
        await self._cancel_finalize()
        self._finalize_task = self.create_task(self._finalize(time.monotonic() - silent_secs), name)

    async def _cancel_finalize(self) -> None:
        task, self._finalize_task = self._finalize_task, None
        if task is not None:
            await self.cancel_task(task)

    async def _finalize(self, silence_started: float) -> None:
        """Get the turn's transcript, wait the silence the turn rule asks for, emit it."""
        started = time.monotonic()
        spec = self._speculation
        audio = self._buffered_audio()
        reused = spec is not None and spec.valid and self._speculation_covers_speech(spec)
        try:
            transcript = await self._final_transcript(audio, spec if reused else None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Reported upstream: the client gets an error and the bot says so.
            self._end_turn()
            await self.push_error(f"speech recognition failed: {exc}", exception=exc)
            return
        text = transcript.text
        tail = transcript.tail_confidence
        finished, probability = await self._turn_sounds_finished(transcript, audio)
        ready_ms = (time.monotonic() - started) * 1000
        silence_needed = self._turn_end_silence(text, finished)
        if silence_needed > 0:
            wait = silence_needed - (time.monotonic() - silence_started)
            logger.debug(
                f"{self}: turn may go on ({text!r}, finished={finished}, last word "
                f"p={tail if tail is None else round(tail, 2)}, smart-turn={probability}); "
                f"waiting {max(0.0, wait):.2f}s for more"
            )
            await self._wait_for_more_speech(wait)
        self._finalize_task = None
        self._end_turn()
        if not text:
            logger.debug(f"{self}: turn had no words")
            return
        self.turns += 1
        logger.info(
            f"{self}: user said {text!r} (transcript ready {ready_ms:.0f}ms after VAD stop, "
            f"speculative={reused}, finished={finished})"
        )
        await self.push_frame(
            TranscriptionFrame(
                text=text, user_id=self._user_id, timestamp=time_now_iso8601(), finalized=True
            )
        )

    async def _final_transcript(
        self, audio: np.ndarray, speculation: _Speculation | None
    ) -> Transcript:
        """The speculative transcript when it can be used, else a fresh final one."""
        transcript: Transcript | None = None
        if speculation is not None:
            transcript = await speculation.task
        if transcript is None:
            # No speculation, a stale one, or the speculative run raised (pipecat's
            # task manager logs it and returns None): transcribe what we have.
            transcript = await self._transcriber.transcribe(audio, Transcriber.FINAL)
        return transcript

    async def _turn_sounds_finished(
        self, transcript: Transcript, audio: np.ndarray
    ) -> tuple[bool, float | None]:
        """Whether the turn sounds finished, and smart-turn's probability if it was asked."""
        finished = text_sounds_finished(transcript.text)
        tail = transcript.tail_confidence
        if finished and tail is not None and tail < self._min_tail_confidence:
            # The judge reads the last word; a guessed one cannot end the turn early.
            finished = False
        probability = None
        if finished and self._turn_session is not None:
            probability = await asyncio.to_thread(smart_turn_probability, self._turn_session, audio)
            finished = probability >= 0.5
        return finished, probability

    def _turn_end_silence(self, text: str, finished: bool) -> float:
        """Seconds of silence (from its start) after which the turn ends; 0: end it now."""
        if not finished:
            return self._max_pause
        if len(text.split()) <= self._short_turn_words:
            # "Hello there." / "Stop, please." often open a longer sentence: give the
            # speaker a comma-sized pause more before answering.
            return self._short_turn_pause
        return 0.0

    async def _wait_for_more_speech(self, wait: float) -> None:
        """Sleep ``wait`` seconds, then as long as a raw onset awaits VAD's verdict.

        Speech that VAD confirms meanwhile cancels the finalization (this task).
        """
        if wait > 0:
            await asyncio.sleep(wait)
        # Speech may be starting again (raw onset, not yet confirmed by VAD): give
        # VAD the chance to confirm it — which cancels this task — before ending.
        while self._onset_at is not None and time.monotonic() - self._onset_at < self._onset_hold:
            await asyncio.sleep(0.02)

    def _end_turn(self) -> None:
        """Close the utterance; its tail becomes the next turn's pre-roll."""
        # Audio that arrived after the transcript was taken may be the start of the
        # next turn: keep the tail as pre-roll so its first word is not lost.
        if self._buffer:
            tail = bytes(self._buffer[-self._preroll_max :])
            self._preroll.clear()
            self._preroll.append(tail)
            self._preroll_bytes = len(tail)
        self._buffer = None
        self._drop_speculation()
        self._speaking = False
