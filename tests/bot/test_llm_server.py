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


def fake_openai_server(requests: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        requests.append({"body": body, "auth": request.headers.get("authorization")})

        async def stream():
            for i, piece in enumerate(ANSWER):
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
