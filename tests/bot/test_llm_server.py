"""``--llm-url``: the bot talks to an OpenAI-compatible server.

No language model can run here, so the server is a small stand-in on loopback that
speaks the OpenAI streaming chat-completions protocol and records what it was sent.
Everything else is real: ``bot.py``, Pipecat's ``OpenAILLMService``, the websocket.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from pipecat_vibevoice.clients.voice_client import VoiceClient

from .conftest import free_port, start_bot, stop_bot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ANSWER = ["The sky ", "is blue ", "because air ", "scatters blue light."]


def fake_openai_server(requests: list[dict], answer: list[str] = ANSWER) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        requests.append({"body": body, "auth": request.headers.get("authorization")})

        async def stream():
            for i, piece in enumerate(answer):
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": piece}
                            if i == 0
                            else {"content": piece},
                            "finish_reason": None,
                        }
                    ],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            done = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            yield f"data: {json.dumps(done)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


async def test_bot_answers_with_the_llm_server(tmp_path, speech, monkeypatch):
    requests: list[dict] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            fake_openai_server(requests), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    monkeypatch.setenv("PIPECAT_VIBEVOICE_LLM_API_KEY", "test-key")
    bot = start_bot(
        tmp_path,
        "--llm-url",
        f"http://127.0.0.1:{port}/v1",
        "--llm-model",
        "tiny-test",
        "--system-prompt",
        "Be brief.",
    )
    try:
        assert bot.health()["llm"] == {"url": f"http://127.0.0.1:{port}/v1", "model": "tiny-test"}
        async with VoiceClient(bot.ws_url) as client:
            await asyncio.sleep(0.5)
            asked = await client.say(speech["question"])
            await client.wait_bot_audio(asked.end, timeout=20)
            await client.wait_for(
                lambda: "scatters blue light" in " ".join(t for _, t in client.events.bot_text),
                timeout=20,
            )
        assert requests, "the LLM server was never called"
        sent = requests[-1]
        assert sent["auth"] == "Bearer test-key"
        assert sent["body"]["model"] == "tiny-test"
        messages = sent["body"]["messages"]
        assert messages[0] == {"role": "system", "content": "Be brief."}
        assert messages[-1]["role"] == "user"
        assert "time" in messages[-1]["content"].lower()
    finally:
        stop_bot(bot)
        server.should_exit = True
        thread.join(timeout=10)


STORY = [
    "Once upon a time ",
    "there was a brave ",
    "little dog who lived ",
    "by the sea. ",
    "Every morning he ",
    "ran along the beach ",
    "and barked at the waves.",
]


def words_heard(client: VoiceClient, until: float) -> list[str]:
    """The bot's words (RTVI ``bot-tts-text``, one per word as it plays) before ``until``."""
    return [
        m["data"]["text"]
        for t, m in client.events.messages
        if m.get("type") == "bot-tts-text" and t <= until
    ]


async def test_after_a_barge_in_the_context_holds_the_words_that_were_heard(tmp_path, speech):
    """The next LLM request remembers the interrupted answer as far as it was spoken."""
    requests: list[dict] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            fake_openai_server(requests, STORY), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    bot = start_bot(tmp_path, "--llm-url", f"http://127.0.0.1:{port}/v1")
    try:
        async with VoiceClient(bot.ws_url) as client:
            await asyncio.sleep(0.5)
            asked = await client.say(speech["question"])
            heard = await client.wait_bot_audio(asked.end, timeout=20)
            # Barge in while the first sentence plays (it lasts ~3 s), while audible.
            await asyncio.sleep(max(0.0, heard + 1.4 - time.monotonic()))
            await client.wait_for(lambda: client.player.is_audible(time.monotonic()), timeout=5)
            barge, done = client.say_nowait(speech["barge"])
            await done
            quiet = client.player.last_audible_between(barge.onset - 0.1, barge.end)
            assert quiet is not None, "the bot was not audible when the user barged in"
            await client.wait_for(lambda: len(requests) >= 2, timeout=20)
        answered = [m for m in requests[1]["body"]["messages"] if m["role"] == "assistant"]
        assert answered, "the interrupted answer is missing from the next request"
        kept = answered[-1]["content"].split()
        full = "".join(STORY).split()
        heard_words = words_heard(client, quiet)
        assert kept == full[: len(kept)], f"not a prefix of the answer: {kept}"
        assert 0 < len(kept) < len(full), kept
        assert abs(len(kept) - len(heard_words)) <= 1, (kept, heard_words)
    finally:
        stop_bot(bot)
        server.should_exit = True
        thread.join(timeout=10)
