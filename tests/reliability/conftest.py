"""Fixtures of the server-level reliability tests: real servers in this process.

The TTS server is the real ``create_app`` of :mod:`pipecat_vibevoice.serving` on a free
loopback port, over an engine whose Piper backend counts its work and can fail on
demand (:class:`~reliability.harness.FaultyPiper`). Running it in this process lets
the tests count the server loop's asyncio tasks and the process's threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bot.conftest import synthesize_phrases
from reliability.harness import FaultyPiper, LoopServer, faulty_engine
from serving.tts_harness import settings_for

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.serving.app import create_app


def start_tts_server(
    tmp: Path, engine: TTSEngine | None = None, **overrides: Any
) -> tuple[LoopServer, TTSEngine, FaultyPiper | None]:
    """A serving app on a loopback port; the engine is initialised on the server's loop."""
    backend = None
    if engine is None:
        engine, backend = faulty_engine()

    async def init(_server: LoopServer) -> None:
        await engine.initialize()

    app = create_app(settings_for(tmp, **overrides), engine=engine)
    server = LoopServer(app, before_serve=init).start()
    return server, engine, backend


@pytest.fixture(scope="module")
def tts_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LoopServer, TTSEngine, FaultyPiper]]:
    """One faulty-Piper TTS server per module (cache off: every request synthesises)."""
    server, engine, backend = start_tts_server(
        tmp_path_factory.mktemp("tts-faults"), cache_max_bytes=0
    )
    yield server, engine, backend
    server.stop()
    asyncio.run(engine.cleanup())


MIC_RATE = 16000
#: What the test user says (16 kHz Piper speech, made at test time).
USER_PHRASES = {
    "question": "What time is it in Paris right now?",
    "hello": "Hello there, can you hear me?",
    "story": "Please tell me a long story about a brave little dog.",
}


@pytest.fixture(scope="session")
def user_speech() -> dict[str, Any]:
    """The user's phrases as int16 16 kHz arrays, synthesised by our engine."""
    return synthesize_phrases(USER_PHRASES, MIC_RATE)


def start_bot_server(
    bot_config: Any = None, models: Any = None, engine: TTSEngine | None = None
) -> LoopServer:
    """The voice bot's app (``WS /ws``, ``GET /health``) in this process.

    Shared models are loaded on the server's loop before it serves (or ``models`` are
    reused), so a test can swap in a faulty engine or transcriber.
    """
    from pipecat_vibevoice.bot import create_app
    from pipecat_vibevoice.bot.settings import ServerSettings
    from pipecat_vibevoice.pipeline import BotConfig, load_shared_models

    config = bot_config or BotConfig()
    # Admission by load off: these tests inject faults, not load (see tests/bot/conftest.py).
    app = create_app(ServerSettings(bot=config, admission="off"))

    async def load(server: LoopServer) -> None:
        shared = models or await load_shared_models(config, engine=engine)
        server.app.state.models = shared
        server.app.state.engine = shared.tts

    return LoopServer(app, before_serve=load).start()


@pytest.fixture(scope="module")
def bot_server() -> Iterator[tuple[LoopServer, TTSEngine, FaultyPiper]]:
    """One in-process bot over a faulty-Piper engine per module."""
    engine, backend = faulty_engine()
    server = start_bot_server(engine=engine)
    yield server, engine, backend
    server.stop()
    server.app.state.models.transcriber.close()
    asyncio.run(engine.cleanup())
