"""``bot.py --tts-url``: the bot loads no TTS model and speaks through a remote TTS server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serving.tts_harness import PIPER, ServerThread, settings_for
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pipecat_vibevoice.clients.voice_client import VoiceClient
from pipecat_vibevoice.serving.app import create_app

from .conftest import REPO, free_port, start_bot, stop_bot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def dead_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/v1/tts/stream"


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_bot_speaks_through_the_remote_server_and_loads_no_tts_model(
    tmp_path: Path, speech
) -> None:
    tts_server = ServerThread(create_app(settings_for(tmp_path), PIPER)).start()
    bot = start_bot(tmp_path, "--tts-url", f"{dead_url()},{tts_server.url}")
    try:
        status, body = health(bot.port)
        assert status == 200 and body["status"] == "ok", body
        assert body["tts"] == {"kind": "remote", "reachable": True}
        assert [s["reachable"] for s in body["models"]["tts"]["servers"]] == [False, True]
        assert "serving" not in body  # no /v1/tts/stream of its own
        with pytest.raises(InvalidStatus):
            await connect(f"ws://127.0.0.1:{bot.port}/v1/tts/stream")

        async with VoiceClient(bot.ws_url) as client:
            await asyncio.sleep(0.5)
            asked = await client.say(speech["hello"])
            assert asked.end is not None
            heard = await client.wait_bot_audio(asked.end, timeout=20)
            assert heard > asked.end
        log = bot.log()
        assert "TTS engine ready" not in log, "the bot loaded a TTS model of its own"
        assert "no TTS model loaded here" in log
        assert f"connected to {tts_server.url}" in log
        # The answer was synthesised by the remote server.
        assert await tts_server.serving_state.store.flush()
        assert tts_server.serving_state.health()["sessions"] is not None
    finally:
        stop_bot(bot)
        tts_server.stop()
    import sqlite3

    with sqlite3.connect(tts_server.serving_state.settings.store_url) as db:
        rows = db.execute("SELECT outcome FROM syntheses").fetchall()
    # (The client hung up at the first audio, so the answer's item may be cancelled.)
    assert rows and {r[0] for r in rows} <= {"ok", "cancelled"}, rows


def test_health_says_when_the_remote_tts_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "bot.log"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bot.py"), "--port", str(port), "--tts-url", dead_url()],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + 90
        body: dict = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                status, body = health(port)
            except OSError:
                time.sleep(0.2)
                continue
            if body.get("tts"):
                break
            time.sleep(0.2)
        assert status == 503 and body["status"] == "degraded", body
        assert body["tts"] == {"kind": "remote", "reachable": False}
        assert "TTS engine ready" not in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_default_path_is_unchanged(bot_server) -> None:
    body = bot_server.health()
    assert body["tts"]["kind"] == "engine" and body["engine"]["engine"] == "piper"
    assert "serving" in body
