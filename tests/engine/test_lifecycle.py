"""Initialisation, auto fallback, cleanup and the process-wide singleton."""

from __future__ import annotations

import asyncio

import pytest

from pipecat_vibevoice.engine import (
    EngineNotReadyError,
    TTSConfig,
    TTSEngine,
    get_tts_engine,
    shutdown_tts_engine,
)
from pipecat_vibevoice.engine.backends import piper as piper_module


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count real Piper loads (the real load still runs)."""
    counter = {"loads": 0}
    original = piper_module.PiperBackend.load

    def counted(self) -> None:
        counter["loads"] += 1
        original(self)

    monkeypatch.setattr(piper_module.PiperBackend, "load", counted)
    return counter


async def test_auto_falls_back_to_the_bundled_voice_and_says_so(tmp_path) -> None:
    engine = TTSEngine(TTSConfig(engine="auto", model_path=str(tmp_path / "no-weights-here")))
    try:
        await engine.initialize()
        health = await engine.health_check()
        assert health["status"] == "degraded"
        assert health["engine"] == "piper"
        assert "vibevoice" in health["fallback_reason"]
    finally:
        await engine.cleanup()


async def test_forced_vibevoice_without_weights_fails_clearly(tmp_path) -> None:
    engine = TTSEngine(
        TTSConfig(engine="vibevoice", model_path=str(tmp_path / "missing"), load_retries=1)
    )
    with pytest.raises(RuntimeError, match="no TTS backend could be loaded"):
        await engine.initialize()
    health = await engine.health_check()
    assert health["status"] == "not_initialized" and health["load_errors"]


async def test_initialize_is_idempotent_under_concurrency(count_loads) -> None:
    engine = TTSEngine(TTSConfig(engine="piper"))
    try:
        await asyncio.gather(*(engine.initialize() for _ in range(8)))
        assert count_loads["loads"] == 1
    finally:
        await engine.cleanup()


async def test_cleanup_frees_the_model_and_allows_reinitialising() -> None:
    engine = TTSEngine(TTSConfig(engine="piper"))
    await engine.initialize()
    await engine.cleanup()
    assert not engine.is_initialized
    assert (await engine.health_check())["status"] == "not_initialized"
    with pytest.raises(EngineNotReadyError):
        await engine.get_available_speakers()
    chunks = [c async for c in engine.synthesize_streaming("Back again.")]
    assert chunks
    await engine.cleanup()


async def test_singleton_is_shared_by_concurrent_callers(count_loads) -> None:
    await shutdown_tts_engine()  # start clean: other suites may have left one running
    count_loads["loads"] = 0
    config = TTSConfig(engine="piper")
    try:
        engines = await asyncio.gather(*(get_tts_engine(config) for _ in range(10)))
        assert all(e is engines[0] for e in engines)
        assert count_loads["loads"] == 1
        assert await get_tts_engine() is engines[0]
        with pytest.raises(ValueError, match="shutdown_tts_engine"):
            await get_tts_engine(TTSConfig(engine="piper", sample_rate=16000))
    finally:
        await shutdown_tts_engine()
    assert not engines[0].is_initialized
    fresh = await get_tts_engine(config)
    try:
        assert fresh is not engines[0]
    finally:
        await shutdown_tts_engine()
