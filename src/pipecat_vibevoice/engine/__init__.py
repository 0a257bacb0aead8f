"""The TTS engine: config, async streaming API and the process-wide instance.

This package knows nothing of Pipecat; services adapt it to frames.
"""

from .backends.base import BackendUnavailable
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
    "TTSConfig",
    "TTSEngine",
    "TextError",
    "TextTooLongError",
    "UnknownVoiceError",
    "get_tts_engine",
    "shutdown_tts_engine",
]
