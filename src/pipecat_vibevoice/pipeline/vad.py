"""The speech gate: Silero VAD on a shared ONNX session, with an early pause.

Confirmed speech still follows Pipecat's rules (``confidence``/``start_secs``/
``stop_secs``) and is announced with Pipecat's own VAD frames, so the user turn
strategies, the interruption and RTVI work unchanged. On top of that, the gate
watches the raw per-window confidence:

* a couple of windows over ``onset_confidence`` while the bot is audible → the output
  transport *holds* the bot's audio now (:class:`PlaybackControlFrame`; ~70 ms after
  the user starts) rather than wait ~200 ms+ for the confirmed interruption, so any
  client falls silent within the little audio it has buffered; a client that knows our
  ``playback-pause`` message pauses even that. If the onset is not confirmed as speech
  within ``pause_timeout_secs`` the held audio goes out (and the client is told to
  resume), so a cough costs a hiccup, not the bot's answer; confirmed, the interruption
  discards it;
* a couple of quiet windows after speech → :class:`ProbableSpeechEndFrame`, which
  lets the recognizer start the final transcript before ``stop_secs`` has passed.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np
from loguru import logger
from pipecat.audio.utils import exp_smoothing
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from .frames import (
    ClientProtocolErrorFrame,
    PlaybackControlFrame,
    ProbableSpeechEndFrame,
    SpeechOnsetFrame,
    SpeechResumedFrame,
    client_error,
    client_message,
)

#: Windows under this confidence count as quiet for the probable-end signal.
QUIET_CONFIDENCE = 0.3
#: Skipped windows replayed through Silero before it scores again (256 ms). Its
#: recurrent state then matches one that heard every window: with 3 or fewer the onset
#: of speech 12 dB under the test phrase came 120 ms late; 8 matched Pipecat's own
#: analyzer window for window at noise floors from -80 to -55 dBFS.
WARMUP_WINDOWS = 8
#: How often ``UserSpeakingFrame`` is broadcast while speech is confirmed.
USER_SPEAKING_INTERVAL_SECS = 0.2


def _float_audio(buffer: bytes) -> np.ndarray:
    """PCM16 bytes as the float32 samples Silero reads (as Pipecat converts them)."""
    return np.frombuffer(buffer, np.int16).astype(np.float32) / 32768.0


def _silero_model_over(session: Any) -> SileroOnnxModel:
    """Pipecat's Silero wrapper around an existing ONNX session (no model load).

    ``SileroOnnxModel.__init__`` opens its own session; this sets the same attributes
    it does, with the shared session instead.
    """
    model = SileroOnnxModel.__new__(SileroOnnxModel)
    model.session = session
    model.sample_rates = [8000, 16000]
    model.reset_states()
    return model


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Pipecat's Silero analyzer over a process-wide ONNX session.

    The recurrent state and the audio context stay in this (per-conversation)
    object; only the immutable session is shared. ``confidences`` collects the raw
    score of every window analysed since the caller last drained it.

    Silero runs only on windows that could be speech by Pipecat's own rule: Pipecat
    calls a window speech when its confidence *and* its smoothed volume pass, so while
    the smoothed volume and the volume of the window just in (the loudness of the last
    400 ms, before smoothing) are both under ``min_volume``, the confidence cannot
    change the VAD's state and the model is not asked (the window scores 0, as
    Pipecat's reset bookkeeping sees it). Pipecat's decisions are the same window for
    window; a loud onset is scored in the window it arrives, after the model has
    replayed the last :data:`WARMUP_WINDOWS` skipped windows so that its recurrent state
    is the one it would have had. Each skipped window is replayed at most once, so the
    model never runs more often than Pipecat's own analyzer would. ``model_windows`` and
    ``skipped_windows`` count the windows scored and skipped. Between a user's turns most
    windows are quiet: with 8 conversations, the VAD had been a quarter of the event
    loop's work (py-spy), most of it Silero.
    """

    def __init__(
        self, session: Any, *, sample_rate: int | None = None, params: VADParams | None = None
    ) -> None:
        # Skip SileroVADAnalyzer.__init__: it would load a private copy of the model.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _silero_model_over(session)
        # The model-reset bookkeeping SileroVADAnalyzer.__init__ would have set up.
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self.confidences: list[float] = []
        self.model_windows = 0
        self.skipped_windows = 0
        # The smoothed volume of the window being analysed, measured ahead of Pipecat
        # asking for it (it asks for the confidence first, then the volume).
        self._pending_volume: tuple[bytes, float] | None = None
        # The latest skipped windows, replayed through the model before it scores again.
        self._skipped: collections.deque[bytes] = collections.deque(maxlen=WARMUP_WINDOWS)

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Analyse one frame on the event loop rather than in a worker thread.

        Pipecat hands every 20 ms frame to the analyzer's thread and back. Measured on
        the project's 2-core box: 0.40 ms of CPU per frame that way against 0.13 ms
        inline (one Silero window is ~0.25 ms of ONNX work, every other frame fills
        none), and each hand-off makes the loop, which moves every conversation's
        audio, wait for the GIL. Inline, 16 conversations cost the loop ~0.1 s/s.
        """
        return self._run_analyzer(buffer)

    def voice_confidence(self, buffer: bytes) -> float:
        """Score one window (unless it is too quiet to be speech) and remember the score."""
        self._volume_tracker.update(buffer, self.sample_rate)
        window_volume = self._volume_tracker.volume
        smoothed = exp_smoothing(window_volume, self._prev_volume, self._smoothing_factor)
        self._pending_volume = (buffer, smoothed)
        if max(window_volume, smoothed) < self._params.min_volume:
            self.skipped_windows += 1
            self._maybe_reset_model(0.0)
            self._skipped.append(buffer)
            self.confidences.append(0.0)
            return 0.0
        while self._skipped:
            self._model(_float_audio(self._skipped.popleft()), self.sample_rate)
        self.model_windows += 1
        confidence = super().voice_confidence(buffer)
        self.confidences.append(float(np.asarray(confidence).reshape(-1)[0]))
        return confidence

    def _get_smoothed_volume(self, audio: bytes) -> float:
        """The volume measured with this window's confidence (Pipecat's own, else)."""
        pending, self._pending_volume = self._pending_volume, None
        if pending is not None and pending[0] is audio:
            return pending[1]
        return super()._get_smoothed_volume(audio)

    def drain(self) -> list[float]:
        """Raw scores of the windows analysed since the last call."""
        values, self.confidences = self.confidences, []
        return values


class SpeechGate(FrameProcessor):
    """VAD processor with an early playback pause and an early end-of-speech hint."""

    def __init__(
        self,
        analyzer: SharedSileroVADAnalyzer,
        *,
        onset_confidence: float = 0.5,
        onset_windows: int = 2,
        end_windows: int = 2,
        pause_timeout_secs: float = 0.6,
        expected_sample_rate: int = 16000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._analyzer = analyzer
        self._onset_confidence = onset_confidence
        self._onset_windows = onset_windows
        self._end_windows = end_windows
        self._pause_timeout = pause_timeout_secs
        self._expected_rate = expected_sample_rate
        self._state = VADState.QUIET
        self._high_run = 0
        self._low_run = 0
        self._in_speech = False  # raw: onset seen and no probable end since
        self._probable_end = False
        self._paused_at: float | None = None
        self._bot_speaking = False
        self._user_turn_open = False  # Pipecat's user turn (from the aggregator)
        self._last_activity = 0.0
        self._bad_audio_reported = False
        self.pauses = 0
        self.false_pauses = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Forward every frame, then run the VAD on user audio."""
        await super().process_frame(frame, direction)
        if isinstance(frame, ClientProtocolErrorFrame):
            await self._send_client(client_error(frame.error))
            return
        if isinstance(frame, InputAudioRawFrame):
            if frame.sample_rate != self._expected_rate or frame.num_channels != 1:
                await self._report_unusable_audio(frame)
                return
            await self.push_frame(frame, direction)
            await self._analyze(frame)
            return
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._user_turn_open = True
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_turn_open = False
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._analyzer.set_sample_rate(self._expected_rate)
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._analyzer.cleanup()

    async def _report_unusable_audio(self, frame: InputAudioRawFrame) -> None:
        """Warn the client (once per connection) that audio in a wrong format is dropped."""
        if not self._bad_audio_reported:
            self._bad_audio_reported = True
            error = (
                f"audio must be 16-bit mono PCM at {self._expected_rate} Hz; got "
                f"{frame.sample_rate} Hz, {frame.num_channels} channel(s): dropped"
            )
            logger.warning(f"{self}: {error}")
            await self._send_client(client_error(error))

    async def _analyze(self, frame: InputAudioRawFrame) -> None:
        """Run the VAD over one frame: raw-window signals first, then Pipecat's state."""
        new_state = await self._analyzer.analyze_audio(frame.audio)
        now = time.monotonic()
        for confidence in self._analyzer.drain():
            await self._on_window(confidence, now)
        if new_state != self._state and new_state in (VADState.SPEAKING, VADState.QUIET):
            await self._on_confirmed_state(new_state)
        if (
            self._state == VADState.SPEAKING
            and now - self._last_activity >= USER_SPEAKING_INTERVAL_SECS
        ):
            self._last_activity = now
            await self.broadcast_frame(UserSpeakingFrame)
        await self._maybe_resume_playback(now, new_state)

    async def _on_confirmed_state(self, new_state: VADState) -> None:
        """Announce confirmed speech or silence with Pipecat's own VAD frames."""
        if new_state == VADState.SPEAKING:
            logger.debug(f"{self}: user started speaking")
            if self._paused_at is not None:
                # Confirmed: what the client holds is stale. A new user turn gets
                # Pipecat's interruption, which the output transport sends after
                # the last stale chunk (so nothing old sneaks in after it); a turn
                # resumed after a pause gets none, and the bot is silent then, so
                # the gate says it itself.
                self._paused_at = None
                if self._user_turn_open:
                    await self.push_frame(PlaybackControlFrame("drop"))
                    await self._send_client(client_message("playback-flush"))
            await self.broadcast_frame(
                VADUserStartedSpeakingFrame, start_secs=self._analyzer.params.start_secs
            )
        else:
            logger.debug(f"{self}: user stopped speaking")
            await self.broadcast_frame(
                VADUserStoppedSpeakingFrame, stop_secs=self._analyzer.params.stop_secs
            )
        self._state = new_state

    async def _maybe_resume_playback(self, now: float, new_state: VADState) -> None:
        """Resume the client's playback when a pause was not confirmed as speech in time."""
        if (
            self._paused_at is not None
            and now - self._paused_at >= self._pause_timeout
            and self._state != VADState.SPEAKING
            and new_state != VADState.STARTING
        ):
            self._paused_at = None
            self.false_pauses += 1
            logger.debug(f"{self}: onset not confirmed as speech, resuming playback")
            await self.push_frame(PlaybackControlFrame("release"))
            await self._send_client(client_message("playback-resume"))

    async def _on_window(self, confidence: float, now: float) -> None:
        """Track runs of loud and quiet windows: onset (pause playback) and probable end."""
        if confidence >= self._onset_confidence:
            self._high_run += 1
            self._low_run = 0
        else:
            self._high_run = 0
            self._low_run = self._low_run + 1 if confidence < QUIET_CONFIDENCE else 0
        if self._high_run >= self._onset_windows and not self._in_speech:
            self._in_speech = True
            if self._probable_end:
                self._probable_end = False
                await self.push_frame(SpeechResumedFrame())
            await self.push_frame(SpeechOnsetFrame())
            if self._paused_at is None and self._state != VADState.SPEAKING:
                self._paused_at = now
                self.pauses += 1
                if self._bot_speaking:
                    await self.push_frame(PlaybackControlFrame("hold"))
                await self._send_client(
                    client_message("playback-pause", bot_speaking=self._bot_speaking)
                )
        elif self._low_run >= self._end_windows and self._in_speech:
            self._in_speech = False
            self._probable_end = True
            await self.push_frame(ProbableSpeechEndFrame())

    async def _send_client(self, message: dict[str, Any]) -> None:
        """Send a JSON message to the client now, ahead of queued audio."""
        await self.push_frame(OutputTransportMessageUrgentFrame(message=message))
