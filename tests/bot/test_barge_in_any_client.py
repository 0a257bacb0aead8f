"""Barge-in for a client that knows only Pipecat's standard frames.

The client here ignores our ``playback-pause`` and friends and flushes its player only
on Pipecat's ``interruption`` frame, like Pipecat's own client SDKs. It must still hear
the bot stop quickly, because the server (a) sends audio at real time, so the client
holds little (a playout lead of 80 ms, at most :data:`MAX_LEAD_S` on a busy server), and (b) stops sending at the first voiced frames, before the interruption
is confirmed. Both are checked structurally (how much audio the client holds, and that
the audio stopped before the interruption came), not by wall-clock luck.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from pipecat_vibevoice.bot.transport import MAX_LEAD_S
from pipecat_vibevoice.clients.voice_client import VoiceClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: The output's largest playout lead (it grows from two 40 ms chunks only when writes
#: come late), the chunk being written, and 60 ms for the client's own scheduling.
MAX_QUEUED_S = MAX_LEAD_S + 0.04 + 0.06


async def test_a_plain_client_holds_little_and_falls_silent_before_the_interruption(
    bot_server, speech
):
    async with VoiceClient(bot_server.ws_url, custom_messages=False) as client:
        await asyncio.sleep(0.5)
        asked = await client.say(speech["question"])
        await client.wait_bot_audio(asked.end, timeout=15)
        await asyncio.sleep(1.0)
        await client.wait_for(lambda: client.player.is_audible(time.monotonic()), timeout=5)
        answer_started = min(t for t, _ in client.events.audio_arrivals if t >= asked.end)
        before_barge = time.monotonic()

        barge, done = client.say_nowait(speech["barge"])
        await done
        await client.wait_for(lambda: client.events.interruptions, timeout=10)
        interruption = next(t for t in client.events.interruptions if t > before_barge)

        # (a) Paced at real time: the client never held more than the lead.
        queued = [q for t, q in client.events.audio_arrivals if answer_started <= t < interruption]
        assert queued, "no bot audio before the barge-in"
        assert max(queued) <= MAX_QUEUED_S, f"client held {max(queued):.2f}s of audio"

        # (b) Held at the onset: audio stopped well before the confirmed interruption
        # (confirmation needs vad_start_secs of speech, sent at real time: 0.2 s).
        last_audio = max(t for t, _ in client.events.audio_arrivals if t < interruption)
        assert barge.onset is not None and last_audio < interruption - 0.05, (
            f"audio kept coming until {interruption - last_audio:.3f}s before the interruption"
        )
        quiet = client.player.last_audible_between(barge.onset - 0.1, interruption)
        assert quiet is not None, "the bot was not audible when the user barged in"
        assert quiet < interruption - 0.02, "the client only went quiet when the interruption came"

        # The barge-in is still answered.
        reply = await client.wait_bot_audio(barge.end, timeout=15)
        assert reply >= barge.end
