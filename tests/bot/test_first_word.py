"""A stream that starts mid-speech keeps the turn's first word.

Pipecat's browser SDK sends nothing before the first non-zero microphone sample, so its
stream may begin on a voiced sample with no silence before it. Here the test user speaks
from the very first frame of the connection; the bot must still hear the first word.
"""

from __future__ import annotations

import pytest

from pipecat_vibevoice.clients.voice_client import VoiceClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_the_first_word_of_a_stream_that_starts_with_speech(bot_server, speech):
    async with VoiceClient(bot_server.ws_url) as client:
        asked, done = client.say_nowait(speech["question"])  # before any silence is sent
        await done
        await client.wait_for(client.final_transcripts, timeout=15)
        assert asked.sent_at - client.connected_at < 0.05, "speech did not start at once"
        first = client.final_transcripts()[0].lower()
        assert first.startswith("what time"), first
