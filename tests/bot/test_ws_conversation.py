"""A real websocket client talks to ``bot.py``: transcript, bot audio, barge-in.

The client (``pipecat_vibevoice.clients.voice_client.VoiceClient``) speaks Pipecat's
protobuf frames with ``websockets``, sends 16 kHz speech at real time and plays the
bot's audio on a real-time player model that obeys pause/resume/flush/interruption.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pipecat_vibevoice.clients.voice_client import VoiceClient

from .conftest import silence

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_question_gets_transcript_and_spoken_answer_then_barge_in_silences_it(
    bot_server, speech
):
    async with VoiceClient(bot_server.ws_url) as client:
        await asyncio.sleep(0.5)
        asked = await client.say(speech["question"])
        assert asked.end is not None, "the synthesized question must be audible"

        heard = await client.wait_bot_audio(asked.end, timeout=15)
        finals = client.final_transcripts()
        assert finals, "no final transcript came back"
        assert "time is it" in finals[-1].lower()
        assert heard > asked.end

        # Let the bot talk a little, then talk over it — while it is audible, not in
        # the quiet between two of its sentences (the answer's length, and so where its
        # pauses fall, changes with the clock time it reads out).
        await asyncio.sleep(1.0)
        await client.wait_for(lambda: client.player.is_audible(time.monotonic()), timeout=5)
        barge, done = client.say_nowait(speech["barge"])
        await done
        assert barge.onset is not None

        # The player went silent soon after the user started, and stayed silent while
        # the user spoke (no old reply leaking back).
        last = client.player.last_audible_between(barge.onset - 0.1, barge.end)
        assert last is not None, "the bot was not audible when the user barged in"
        assert last - barge.onset < 1.0, f"bot kept talking {last - barge.onset:.2f}s"
        assert client.player.flushes or client.events.interruptions

        # The barge-in was heard as the next user turn and answered.
        reply = await client.wait_bot_audio(barge.end, timeout=15)
        assert reply >= barge.end
        finals = client.final_transcripts()
        assert any("story" in t.lower() or "dog" in t.lower() for t in finals[1:]), finals
        bot_said = " ".join(t for _, t in client.events.bot_text).lower()
        assert "heard you say" in bot_said


async def test_short_pause_inside_a_sentence_gets_one_answer(bot_server, speech):
    """ "I would like to book a table for <0.45 s> four people" is one turn, one answer."""
    async with VoiceClient(bot_server.ws_url) as client:
        await asyncio.sleep(0.5)
        start = time.monotonic()
        await client.say(np.concatenate([speech["part1"], silence(0.45), speech["part2"]]))
        await client.wait_bot_audio(start, timeout=15)
        await client.wait_bot_quiet(quiet_secs=1.5, timeout=40)

        finals = client.final_transcripts(after=start)
        turns = [line for line in bot_server.log().splitlines() if "user said" in line]
        assert len(finals) == 1, f"the pause split the turn: {finals}; server: {turns[-3:]}"
        assert "table" in finals[0].lower() and "tonight" in finals[0].lower()
        answers = [m for _, m in client.events.messages if m.get("type") == "bot-llm-started"]
        assert len(answers) == 1, f"bot answered {len(answers)} times"


async def test_many_clients_at_once(bot_server, speech):
    """Three concurrent sessions each get their own transcript and answer."""
    clients = [VoiceClient(bot_server.ws_url) for _ in range(3)]
    for c in clients:
        await c.connect()
    try:
        await asyncio.sleep(0.5)
        phrases = ["question", "hello", "question"]
        utts = await asyncio.gather(
            *(c.say(speech[p]) for c, p in zip(clients, phrases, strict=True))
        )
        await asyncio.gather(
            *(c.wait_bot_audio(u.end, timeout=25) for c, u in zip(clients, utts, strict=True))
        )
        assert bot_server.health()["sessions"]["active"] >= 3
        for c, p in zip(clients, phrases, strict=True):
            finals = c.final_transcripts()
            assert len(finals) == 1, finals
            assert ("time is it" if p == "question" else "hear") in finals[0].lower()
    finally:
        for c in clients:
            await c.close()
