"""The process-wide engine: one model in memory, however many callers."""

from __future__ import annotations

import threading

from loguru import logger

from .config import TTSConfig
from .engine import TTSEngine

_engine: TTSEngine | None = None
_guard = threading.Lock()


async def get_tts_engine(config: TTSConfig | None = None) -> TTSEngine:
    """Return the initialised process-wide engine, creating it on first use.

    Safe under concurrency: many tasks calling at once share one instance and one
    model load. Passing a ``config`` that differs from the live engine's is an error
    (call :func:`shutdown_tts_engine` first), because silently ignoring it would hide
    a misconfiguration.
    """
    global _engine
    with _guard:
        if _engine is None:
            _engine = TTSEngine(config or TTSConfig.from_env())
        elif config is not None and config != _engine.config:
            raise ValueError(
                "the TTS engine already runs with another config; "
                "call shutdown_tts_engine() before changing it"
            )
        engine = _engine
    await engine.initialize()
    return engine


async def shutdown_tts_engine() -> None:
    """Clean up and forget the process-wide engine (no-op if none)."""
    global _engine
    with _guard:
        engine, _engine = _engine, None
    if engine is not None:
        await engine.cleanup()
        logger.info("process-wide TTS engine shut down")
