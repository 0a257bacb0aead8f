"""Build the voice-bot pipeline for one connection.

``transport.input() → SpeechGate (Silero) → StreamingWhisperSTT → user aggregator →
LLM (OpenAI-compatible server or the offline responder) → TTS → transport.output()
→ assistant aggregator``

Every model comes from :class:`~.models.SharedModels`, so a new connection costs a
few small per-conversation objects, not a model load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from .config import BotConfig
from .errors import LLM_FAILED, STT_FAILED, ErrorAnnouncer
from .models import SharedModels
from .responder import OfflineResponder
from .stt import StreamingWhisperSTT
from .turns import FinalTranscriptTurnStopStrategy
from .vad import SharedSileroVADAnalyzer, SpeechGate

#: Builds the TTS processor from the shared models and the bot config.
TTSFactory = Callable[[SharedModels, BotConfig], FrameProcessor]

#: The microphone audio the bot accepts (Whisper's and Silero's rate).
AUDIO_IN_RATE = 16000
#: The bot's voice as sent to the client.
AUDIO_OUT_RATE = 24000


def default_tts_factory(models: SharedModels, config: BotConfig) -> FrameProcessor:
    """Our Pipecat TTS service over the process-wide engine, or over the remote server(s)."""
    if models.tts is None:
        return remote_tts_factory(models, config)
    from ..services import VibeVoiceTTSService

    voice = models.tts.resolve_voice(config.voice)
    return VibeVoiceTTSService(
        models.tts,
        settings=VibeVoiceTTSService.Settings(voice=voice),
        sample_rate=AUDIO_OUT_RATE,
    )


def remote_tts_factory(models: SharedModels, config: BotConfig) -> FrameProcessor:
    """A :class:`~pipecat_vibevoice.services.RemoteTTSService` on ``models.remote_tts``.

    The voice goes to the server as configured (name or index; the server resolves it
    and refuses an unknown one with an ``ErrorFrame``); ``0`` is its default voice.
    """
    from ..services import RemoteTTSService

    if models.remote_tts is None:
        raise RuntimeError("no TTS engine and no remote TTS server configured")
    voice = None if config.voice in (0, "0", "") else config.voice
    return RemoteTTSService(
        list(models.remote_tts.urls),
        token=models.remote_tts.token,
        settings=RemoteTTSService.Settings(voice=voice),
        sample_rate=AUDIO_OUT_RATE,
    )


def make_llm(config: BotConfig) -> FrameProcessor:
    """An OpenAI-compatible LLM service when ``llm_url`` is set, else the offline responder."""
    if config.uses_offline_responder:
        return OfflineResponder()
    from pipecat.services.openai.llm import OpenAILLMService

    logger.info(f"LLM: {config.llm_model} at {config.llm_url}")
    return OpenAILLMService(
        api_key=config.llm_api_key or "not-needed",
        base_url=config.llm_url,
        # Pipecat 1.9+ takes the system prompt on the service, not as a context message.
        settings=OpenAILLMService.Settings(
            model=config.llm_model, system_instruction=config.system_prompt or None
        ),
    )


def make_speech_gate(config: BotConfig, models: SharedModels) -> SpeechGate:
    """The Silero speech gate of one conversation, over the shared VAD session."""
    analyzer = SharedSileroVADAnalyzer(
        models.vad_session,
        params=VADParams(
            confidence=config.vad_confidence,
            start_secs=config.vad_start_secs,
            stop_secs=config.vad_stop_secs,
        ),
    )
    return SpeechGate(
        analyzer,
        onset_confidence=config.onset_confidence,
        onset_windows=config.onset_windows,
        end_windows=config.end_windows,
        pause_timeout_secs=config.pause_timeout_secs,
        expected_sample_rate=AUDIO_IN_RATE,
    )


def make_recognizer(config: BotConfig, models: SharedModels) -> StreamingWhisperSTT:
    """The streaming recognizer of one conversation, over the shared transcriber."""
    return StreamingWhisperSTT(
        models.transcriber,
        turn_session=models.turn_session,
        sample_rate=AUDIO_IN_RATE,
        interim_secs=config.stt_interim_secs,
        stop_secs=config.vad_stop_secs,
        max_pause_secs=config.max_pause_secs,
        short_turn_words=config.short_turn_words,
        short_turn_pause_secs=config.short_turn_pause_secs,
        min_tail_confidence=config.min_tail_confidence,
    )


def make_context_aggregators(context: LLMContext) -> LLMContextAggregatorPair:
    """User/assistant aggregators whose user turn ends on the recognizer's final transcript.

    The recognizer already decided the end of the turn (see :mod:`.turns`), so the
    aggregator must not wait again; a turn without words is left unanswered.
    """
    return LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                start=[VADUserTurnStartStrategy()],
                stop=[FinalTranscriptTurnStopStrategy()],
            ),
            empty_user_turn=None,
        ),
    )


@dataclass
class VoiceBot:
    """One conversation's pipeline, its worker, and handles for tests and metrics."""

    pipeline: Pipeline
    worker: PipelineWorker
    gate: SpeechGate
    stt: StreamingWhisperSTT
    llm: FrameProcessor
    tts: FrameProcessor
    context: LLMContext

    async def greet(self, text: str) -> None:
        """Say ``text`` as the bot's opening line."""
        if text:
            await self.worker.queue_frames([TTSSpeakFrame(text)])


def build_voice_pipeline(
    transport: BaseTransport,
    config: BotConfig,
    models: SharedModels,
    *,
    tts_factory: TTSFactory | None = None,
    observers: list[Any] | None = None,
    enable_rtvi: bool = True,
) -> VoiceBot:
    """Assemble the pipeline and its worker for one connection (nothing runs yet)."""
    gate = make_speech_gate(config, models)
    stt = make_recognizer(config, models)
    context = LLMContext()
    aggregators = make_context_aggregators(context)
    llm = make_llm(config)
    tts = (tts_factory or default_tts_factory)(models, config)
    # Upstream of STT and LLM: their errors pass it on the way to the source.
    announcer = ErrorAnnouncer()
    announcer.watch(stt, STT_FAILED)
    announcer.watch(llm, LLM_FAILED)
    pipeline = Pipeline(
        [
            transport.input(),
            gate,
            announcer,
            stt,
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=AUDIO_IN_RATE,
            audio_out_sample_rate=AUDIO_OUT_RATE,
            enable_metrics=True,
        ),
        idle_timeout_secs=config.idle_timeout_secs,
        observers=observers or [],
        enable_rtvi=enable_rtvi,
    )
    return VoiceBot(pipeline, worker, gate, stt, llm, tts, context)
