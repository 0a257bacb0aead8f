"""A full bot refuses new conversations at once and clearly, and keeps serving its own.

The bot is told a conversation costs far more than the machine has
(``--session-cost-cores 64``), so on any machine it holds exactly one: an idle server
always admits one, and the next would not fit. Five callers arriving together are
refused within a second each, with a fatal RTVI ``error`` and then close code 1013 —
what Pipecat's clients surface — while the admitted conversation is still answered.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

from pipecat_vibevoice.clients.voice_client import VoiceClient

from .conftest import start_bot, stop_bot


@pytest.fixture(scope="module")
def full_bot(tmp_path_factory):
    server = start_bot(
        tmp_path_factory.mktemp("admission"), "--admission", "load", "--session-cost-cores", "64"
    )
    yield server
    stop_bot(server)


async def _attempt(url: str) -> tuple[float, VoiceClient]:
    client = VoiceClient(url, custom_messages=False)
    started = time.monotonic()
    await client.connect()
    await asyncio.wait_for(client.closed.wait(), 5)
    return time.monotonic() - started, client


@pytest.mark.timeout(90)
async def test_callers_past_capacity_are_refused_at_once_and_the_admitted_one_is_served(
    full_bot, speech
):
    async with VoiceClient(full_bot.ws_url, custom_messages=False) as admitted:
        await asyncio.sleep(0.5)
        health = full_bot.health()
        assert health["load"]["admits"] is False and health["load"]["capacity"] == 0
        attempts = await asyncio.gather(*(_attempt(full_bot.ws_url) for _ in range(5)))
        for took, client in attempts:
            assert took < 1.0, f"refusal took {took:.2f}s"
            assert client.close_code == 1013, (client.close_code, client.close_reason)
            assert "busy" in client.close_reason
            errors = [m for _, m in client.events.messages if m.get("type") == "error"]
            assert errors and errors[0]["data"]["fatal"] is True, client.events.messages
            assert "try again later" in errors[0]["data"]["error"]
            assert client.events.audio_frames == 0
        # The conversation that was admitted is served as before.
        utt = await admitted.say(speech["question"])
        await admitted.wait_bot_audio(utt.end, timeout=20)
        assert not admitted.closed.is_set()

    health = full_bot.health()
    assert health["sessions"]["refused"] >= 5
    # "at capacity", or "overloaded" when the machine is busy with other work too.
    assert sum(health["load"]["refused"].values()) >= 5, health["load"]
    with urllib.request.urlopen(full_bot.http + "/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    assert "voice_sessions_refused_total{reason=" in metrics
    assert "voice_session_capacity 0.0" in metrics
    json.dumps(health)  # /health stays plain JSON
