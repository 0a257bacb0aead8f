"""The TTS routes inside the voice bot's app: one server, one port, one engine."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from serving.tts_harness import PIPER, ServerThread, open_client, settings_for

from pipecat_vibevoice.bot import create_app
from pipecat_vibevoice.bot.settings import ServerSettings, build_parser, settings_from_args


def test_bot_flags_carry_serving_settings() -> None:
    args = build_parser().parse_args(["--tts-max-queue", "3", "--tts-token", "abc"])
    settings = settings_from_args(args)
    assert settings.serving.max_queue == 3 and settings.serving.token == "abc"


async def test_tts_stream_metrics_and_health_on_the_bot_app(tmp_path: Path) -> None:
    settings = ServerSettings(pipeline="stock", tts=PIPER, serving=settings_for(tmp_path))
    srv = ServerThread(create_app(settings)).start()
    try:
        client = await open_client(srv.url)
        await client.send(type="speak", id="b1", text="Served next to the bot.")
        result = await client.collect(["b1"])
        assert result["b1"].final["type"] == "done" and len(result["b1"].audio) > 24000
        await client.ws.close()
        with urllib.request.urlopen(srv.http + "/health", timeout=10) as resp:
            health = json.loads(resp.read())
        assert health["serving"]["store"]["kind"] == "sqlite"
        assert health["serving"]["cache"]["entries"] == 1
        with urllib.request.urlopen(srv.http + "/metrics", timeout=10) as resp:
            names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
        assert "tts_first_chunk_latency_seconds" in names
    finally:
        srv.stop()
