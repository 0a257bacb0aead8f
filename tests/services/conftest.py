"""Fixtures for the service's frame-level tests: one real Piper engine per module."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from pipecat_vibevoice.engine import TTSConfig, TTSEngine


@pytest.fixture(scope="module")
def piper_engine() -> Iterator[TTSEngine]:
    """A warmed engine on the bundled voice (24 kHz, 80 ms chunks), shared by a module."""
    engine = TTSEngine(TTSConfig(engine="piper"))
    asyncio.run(engine.initialize())
    yield engine
    asyncio.run(engine.cleanup())
