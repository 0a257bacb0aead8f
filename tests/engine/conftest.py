"""One real Piper engine per module: loading takes ~0.4 s and ~150 MB, so share it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from pipecat_vibevoice.engine import TTSConfig, TTSEngine


@pytest.fixture(scope="module")
def piper_engine() -> Iterator[TTSEngine]:
    """A warmed-up engine on the bundled voice at 24 kHz, 80 ms chunks."""
    engine = TTSEngine(TTSConfig(engine="piper"))
    asyncio.run(engine.initialize())
    yield engine
    asyncio.run(engine.cleanup())
