"""Voices from clips over the TTS socket: a real server on loopback, the tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from serving.tts_harness import ServerThread, open_client, settings_for

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.serving.app import create_app

from .conftest import engine_config, speech_like
from .tiny_model import HOP, SAMPLE_RATE


async def test_a_voice_added_from_a_clip_speaks_over_the_socket_by_name(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    engine = TTSEngine(engine_config(tiny_checkpoint, inference_steps=1))
    await engine.initialize()
    await engine.add_voice("Alice", speech_like(3.0), SAMPLE_RATE)
    server = ServerThread(create_app(settings_for(tmp_path), engine=engine)).start()
    try:
        client = await open_client(server.url)
        await client.send(type="speak", id="a", text="Hi.", voice="alice", seed=4)
        await client.send(type="speak", id="b", text="Hi.", voice="../voices.json")
        got = await client.collect(["a", "b"], timeout=120)
        await client.ws.close()
    finally:
        server.stop()
        await engine.cleanup()
    assert got["a"].final["type"] == "done", got["a"].events
    started = next(e for e in got["a"].events if e["type"] == "started")
    assert started["voice"] == "Alice" and started["sample_rate"] == SAMPLE_RATE
    pcm = np.frombuffer(bytes(got["a"].audio), dtype="<i2")
    assert pcm.size > 0 and pcm.size % HOP == 0 and np.abs(pcm).max() > 1000
    error = got["b"].final
    assert error["type"] == "error" and "unknown voice" in error["message"], error
