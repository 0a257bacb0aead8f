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
