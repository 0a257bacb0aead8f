"""Fixtures for the voice-bot tests: a real server process and synthesized speech.

The server is ``bot.py`` itself, started as a subprocess on a free loopback port
(real uvicorn, real Pipecat transport, real models). The "user" speaks with the
bundled Piper voice at 16 kHz, synthesized (seeded) at test time by our engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MIC_RATE = 16000

#: What the test user says (text → int16 audio at 16 kHz).
PHRASES = {
    "question": "What time is it in Paris right now?",
    "barge": "Stop please. Tell me a story about a brave dog instead.",
    # A sentence cut after a continuation word. Every word here is recognized with
    # p > 0.9 by the bundled tiny.en on each CTranslate2 CPU kernel (AVX-512, AVX2,
    # generic); "a large pizza with" was not: the generic kernel hears "a large
    # piece of width." — a finished sentence, and rightly two turns.
    "part1": "I would like to book a table for",
    "part2": "four people tonight.",
    "hello": "Hello there, can you hear me?",
}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BotServer:
    """A running ``bot.py`` process."""

    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def health(self) -> dict:
        with urllib.request.urlopen(self.http + "/health", timeout=5) as resp:
            return json.loads(resp.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_bot(tmp_dir: Path, *args: str, timeout: float = 90.0) -> BotServer:
    """Start ``bot.py`` on a free port and wait for a healthy ``/health``."""
    port = free_port()
    log_path = tmp_dir / f"bot-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        # Admission by load is off unless a test asks for it (tests/bot/test_admission.py):
        # the functional tests share the box with the test process and other bots, and
        # a refusal there would test the machine, not the feature.
        [
            sys.executable,
            str(REPO / "bot.py"),
            "--port",
            str(port),
            "--engine",
            "piper",
            "--admission",
            "off",
            *args,
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    server = BotServer(port, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bot.py exited with {process.returncode}:\n{server.log()}")
        try:
            if server.health().get("status") == "ok":
                return server
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"bot.py did not become healthy in {timeout}s:\n{server.log()}")


def stop_bot(server: BotServer) -> None:
    """Interrupt the server and wait for it to exit."""
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


@pytest.fixture(scope="session")
def bot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotServer]:
    """One ``bot.py`` (offline defaults, Piper voice) shared by the bot tests."""
    server = start_bot(tmp_path_factory.mktemp("bot"))
    yield server
    stop_bot(server)


#: The test user's voice is seeded: the same audio on every run and machine, so a test
#: result depends on the code under test, not on the draw of VITS's noise. With this
#: seed tiny.en hears every phrase right on the AVX-512, AVX2 and generic CTranslate2
#: kernels (seed 1 turned "Hello there" into "Hold there").
USER_VOICE_SEED = 2


def synthesize_phrases(
    phrases: dict[str, str], rate: int = MIC_RATE, seed: int | None = USER_VOICE_SEED
) -> dict[str, np.ndarray]:
    """Int16 audio at ``rate`` for each phrase, spoken by our engine's bundled voice."""
    from pipecat_vibevoice.engine import TTSConfig, TTSEngine

    async def make() -> dict[str, np.ndarray]:
        engine = TTSEngine(TTSConfig(engine="piper", sample_rate=rate))
        await engine.initialize()
        try:
            return {
                name: await engine.synthesize(text, seed=seed) for name, text in phrases.items()
            }
        finally:
            await engine.cleanup()

    return asyncio.run(make())


@pytest.fixture(scope="session")
def speech() -> dict[str, np.ndarray]:
    """The test user's phrases as int16 16 kHz audio, made by our engine at test time."""
    return synthesize_phrases(PHRASES)


def silence(seconds: float) -> np.ndarray:
    """Int16 zeros."""
    return np.zeros(int(seconds * MIC_RATE), np.int16)
