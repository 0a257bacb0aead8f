"""Bad input and hang-ups: clear errors, and the server keeps serving."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets

from pipecat_vibevoice.clients.voice_client import VoiceClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _frames_pb2():
    from pipecat.frames.protobufs import frames_pb2

    return frames_pb2


async def _wait_sessions(server, active: int, timeout: float = 10.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        health = await asyncio.to_thread(server.health)
        if health["sessions"]["active"] == active or loop.time() > deadline:
            return health
        await asyncio.sleep(0.1)


async def test_malformed_messages_get_errors_and_the_session_goes_on(bot_server, speech):
    async with VoiceClient(bot_server.ws_url) as client:
        await client.send_raw(b"\xff\xfe this is not protobuf")
        await client.send_raw("a text message")
        wrong = _frames_pb2().Frame()
        wrong.audio.audio = np.zeros(441, np.int16).tobytes()
        wrong.audio.sample_rate = 44100
        wrong.audio.num_channels = 1
        await client.send_raw(wrong.SerializeToString())
        errors = await client.wait_for(
            lambda: len(client.events.errors) >= 3 and client.events.errors, timeout=10
        )
        text = " ".join(e for _, e in errors)
        assert "malformed protobuf" in text
        assert "text messages are not supported" in text
        assert "16000 Hz" in text and "44100" in text

        # Same connection still works end to end.
        asked = await client.say(speech["question"])
        await client.wait_bot_audio(asked.end, timeout=15)
        heard = client.final_transcripts()[-1].lower()
        assert "time" in heard and "right now" in heard, heard


async def test_hang_up_mid_answer_cancels_the_pipeline(bot_server, speech):
    before = await _wait_sessions(bot_server, 0)
    client = VoiceClient(bot_server.ws_url)
    await client.connect()
    asked = await client.say(speech["question"])
    await client.wait_bot_audio(asked.end, timeout=15)
    assert (await asyncio.to_thread(bot_server.health))["sessions"]["active"] == 1
    await client.close()  # hang up while the bot is talking
    after = await _wait_sessions(bot_server, 0)
    assert after["sessions"]["active"] == 0, "the pipeline outlived its client"
    assert after["sessions"]["failed"] == before["sessions"]["failed"]
    # A raw socket that vanishes mid-utterance is survived too.
    async with websockets.connect(bot_server.ws_url) as ws:
        frame = _frames_pb2().Frame()
        frame.audio.audio = speech["question"][:8000].tobytes()
        frame.audio.sample_rate = 16000
        frame.audio.num_channels = 1
        await ws.send(frame.SerializeToString())
    assert (await _wait_sessions(bot_server, 0))["sessions"]["active"] == 0
    assert "hung up" in bot_server.log()


def test_health_reports_engine_and_models(bot_server):
    health = bot_server.health()
    assert health["status"] == "ok"
    assert health["engine"]["status"] in ("ok", "degraded")
    assert health["engine"]["sample_rate"] == 24000
    assert "voices" in health["engine"]
    assert health["models"]["stt"]["model"].endswith("model")
    assert health["llm"] == "offline responder"


def test_index_and_static_files_are_served(bot_server):
    with urllib.request.urlopen(bot_server.http + "/", timeout=5) as resp:
        page = resp.read().decode()
    assert "client.js" in page
    for name in ("client.js", "protocol.js", "audio-worklets.js"):
        with urllib.request.urlopen(f"{bot_server.http}/static/{name}", timeout=5) as resp:
            assert resp.headers["content-type"].startswith("text/javascript")
            assert len(resp.read()) > 500
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bot_server.http + "/static/../bot.py", timeout=5)
    assert err.value.code == 404


def test_help_documents_the_flags():
    import subprocess
    import sys

    from .conftest import REPO

    out = subprocess.run(
        [sys.executable, str(REPO / "bot.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--llm-url",
        "--llm-model",
        "--engine",
        "--model-path",
        "--vad-stop-secs",
        "--max-pause-secs",
        "--onset-confidence",
        "--pipeline",
    ):
        assert flag in out, flag
