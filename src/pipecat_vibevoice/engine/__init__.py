"""The TTS engine: config, async streaming API and the process-wide instance.

This package knows nothing of Pipecat; services adapt it to frames.
"""

from .chunks import SpeechChunk
from .config import ConfigError, TTSConfig
from .engine import BatchResult, TTSEngine
from .errors import (
    BackendUnavailable,
    EmptyTextError,
    EngineNotReadyError,
    TextError,
    TextTooLongError,
    UnknownVoiceError,
)
from .growing_text import GrowingText
from .singleton import get_tts_engine, shutdown_tts_engine

__all__ = [
    "BackendUnavailable",
    "BatchResult",
    "ConfigError",
    "EmptyTextError",
    "EngineNotReadyError",
    "GrowingText",
    "SpeechChunk",
    "TTSConfig",
    "TTSEngine",
    "TextError",
    "TextTooLongError",
    "UnknownVoiceError",
    "get_tts_engine",
    "shutdown_tts_engine",
]
