"""Shared harness of the ``bench/bot_*.py`` benchmarks (run it for a one-turn smoke check).

Each bot is ``bot.py`` in its own subprocess on a free loopback port — ours
(``--pipeline vibevoice``) or the stock peer (``--pipeline stock``: Pipecat's
``WhisperSTTService`` + ``PiperTTSService`` on the same local models, the same Silero
VAD, the same offline responder). Both are measured by the same client
(:class:`pipecat_vibevoice.clients.voice_client.VoiceClient`), which speaks 16 kHz
speech synthesized by our engine at real time and plays the bot's audio at real time
as it arrives (pause/resume/flush/interruption obeyed), so every figure is what a
person would hear.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIC_RATE = 16000

#: What the benchmark user says; every answer of the offline responder to these is
#: a long "I heard you say ..." reply, long enough to talk over.
PHRASES = [
    "Tell me a story about a brave little dog.",
    "What is the weather going to be like tomorrow?",
    "Can you recommend a good book to read?",
    "How far is it from London to Paris by train?",
    "Please explain how a rainbow is formed.",
    "I would like to plan a trip to the mountains.",
    "Which movie should we watch tonight?",
    "Remind me to buy milk and eggs later.",
]


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Bot:
    """A running ``bot.py``."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_bot(pipeline: str, *extra: str, timeout: float = 120.0) -> Bot:
    """Start ``bot.py --pipeline <pipeline>`` and wait until ``/health`` is ok."""
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench-bot-{pipeline}-{port}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bot.py"),
            "--port",
            str(port),
            "--pipeline",
            pipeline,
            "--engine",
            "piper",
            "--log-level",
            "INFO",
            *extra,
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    bot = Bot(pipeline, port, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bot.py exited: {log.read_text()[-3000:]}")
        try:
            if bot.health().get("status") == "ok":
                return bot
        except OSError:
            pass
        time.sleep(0.2)
    bot.stop()
    raise RuntimeError(f"bot.py did not start: {log.read_text()[-3000:]}")


#: The user's voice is seeded, as in the tests: the same audio in every run, so two runs
#: differ by the code, not by VITS's draw (which changed transcripts, and with them how
#: long the turn judge waits). With seed 2 tiny.en hears every phrase above right.
USER_VOICE_SEED = 2


async def synthesize_phrases(
    phrases: list[str] = PHRASES, seed: int | None = USER_VOICE_SEED
) -> list[np.ndarray]:
    """The user's phrases as int16 16 kHz audio from our engine (bundled Piper voice)."""
    from pipecat_vibevoice.engine import TTSConfig, TTSEngine

    engine = TTSEngine(TTSConfig(engine="piper", sample_rate=MIC_RATE))
    await engine.initialize()
    try:
        return [await engine.synthesize(p, seed=seed) for p in phrases]
    finally:
        await engine.cleanup()


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..100)."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summary(values: list[float]) -> str:
    """``p50/p95/mean/n`` in ms of seconds values."""
    ms = [v * 1000 for v in values]
    if not ms:
        return "n=0"
    return (
        f"p50 {pct(ms, 50):6.0f} ms  p95 {pct(ms, 95):6.0f} ms  "
        f"mean {statistics.fmean(ms):6.0f} ms  n={len(ms)}"
    )


def machine() -> str:
    """One line about the machine and its load (benchmarks share the cores)."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


async def _smoke() -> None:
    from pipecat_vibevoice.clients.voice_client import VoiceClient

    audio = (await synthesize_phrases(PHRASES[:1]))[0]
    for pipeline in ("vibevoice", "stock"):
        bot = start_bot(pipeline)
        try:
            async with VoiceClient(bot.ws_url) as client:
                await asyncio.sleep(1.0)
                utt = await client.say(audio)
                heard = await client.wait_bot_audio(utt.end, timeout=20)
                print(
                    f"{pipeline:9s} voice-to-voice {1000 * (heard - utt.end):.0f} ms, "
                    f"heard {client.final_transcripts()}"
                )
        finally:
            bot.stop()


if __name__ == "__main__":
    asyncio.run(_smoke())
