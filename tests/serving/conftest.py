"""Fixtures of the serving tests: real servers (uvicorn + the Piper voice) per module/test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serving.tts_harness import PIPER, ServerThread, settings_for

from pipecat_vibevoice.serving.app import create_app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server per test module with default limits."""
    tmp = tmp_path_factory.mktemp("serving")
    srv = ServerThread(create_app(settings_for(tmp), PIPER)).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start servers with special settings; all stopped after the test."""
    started: list[ServerThread] = []

    def make(sndbuf: int | None = None, allowed_origins: str = "", **overrides: Any) -> ServerThread:
        settings = settings_for(tmp_path, **overrides)
        app = create_app(settings, PIPER, allowed_origins=allowed_origins)
        srv = ServerThread(app, sndbuf=sndbuf).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
