"""The TTS engine: config, async streaming API and the process-wide instance.

This package knows nothing of Pipecat; services adapt it to frames.
"""

from .backends.base import BackendUnavailable, TextSource
from .chunks import SpeechChunk
from .config import ConfigError, TTSConfig
from .engine import BatchResult, EngineNotReadyError, TTSEngine, UnknownVoiceError
from .singleton import get_tts_engine, shutdown_tts_engine
from .text import EmptyTextError, TextError, TextTooLongError

__all__ = [
    "BackendUnavailable",
    "BatchResult",
    "ConfigError",
    "EmptyTextError",
    "EngineNotReadyError",
    "SpeechChunk",
    "TTSConfig",
    "TTSEngine",
    "TextError",
    "TextSource",
    "TextTooLongError",
    "UnknownVoiceError",
    "get_tts_engine",
    "shutdown_tts_engine",
]
