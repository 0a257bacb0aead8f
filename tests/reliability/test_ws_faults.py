"""Faults through the real voice bot (``WS /ws``, Pipecat protobuf frames).

The bot app runs in this process on a loopback port (so its asyncio tasks and our
threads can be counted); the client is the project's :class:`VoiceClient`, which
speaks 16 kHz Piper speech at real time and plays the bot's audio at real time.

* hang-up while the bot talks: the pipeline is cancelled, TTS work stops within one
  unit of work, no asyncio task or thread is left behind;
* speech recognition fails on a turn: the client gets an ``error`` and the bot *says*
  it did not catch that; the next turn is recognised and answered;
* the LLM server answers 500 on a turn: same — error, a spoken apology, the next turn
  is answered. The LLM is a tiny OpenAI-compatible server on loopback (no model can run
  here); it fails on purpose when the user's words contain "time".
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from reliability.conftest import start_bot_server
from reliability.harness import (
    LoopServer,
    counted_threads,
    start_all_workers,
    thread_names,
    wait_until,
)

from pipecat_vibevoice.clients.voice_client import VoiceClient
from pipecat_vibevoice.pipeline import Transcriber
from pipecat_vibevoice.pipeline.transcriber import Transcript

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def ws_url(server: LoopServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


def live_sessions(server: LoopServer) -> int:
    return len(server.app.state.sessions.live)


async def _turn(client: VoiceClient, pcm: np.ndarray, timeout: float = 25.0) -> float:
    """Say ``pcm``; return when the bot was first heard after it."""
    utt = await client.say(pcm)
    return await client.wait_bot_audio(utt.end, timeout=timeout)


async def test_hang_up_while_the_bot_talks_leaves_no_work_task_or_thread(
    bot_server, user_speech
) -> None:
    server, engine, backend = bot_server
    # A first conversation starts whatever the process keeps for good (thread pools).
    async with VoiceClient(ws_url(server)) as warm:
        await asyncio.sleep(0.3)
        await _turn(warm, user_speech["hello"])
    assert await wait_until(lambda: live_sessions(server) == 0)
    await asyncio.to_thread(server.call, start_all_workers(engine))
    await asyncio.sleep(1.0)
    tasks_before = await asyncio.to_thread(server.tasks)
    threads_before = counted_threads()
    failed_before = server.app.state.sessions.failed

    client = VoiceClient(ws_url(server))
    await client.connect()
    await asyncio.sleep(0.3)
    await _turn(client, user_speech["story"])  # a long "I heard you say ..." answer
    assert live_sessions(server) == 1
    hung_up = time.monotonic()
    await client.close()  # hang up while the bot is talking

    assert await wait_until(lambda: live_sessions(server) == 0), "the pipeline outlived its client"
    assert await wait_until(lambda: backend.open_streams == 0), "a TTS stream is still open"
    tasks_after = await server.wait_tasks(len(tasks_before))
    await asyncio.sleep(0.5)
    assert backend.requests_after(hung_up) <= 1, "TTS kept working after the hang-up"
    assert tasks_after == tasks_before, f"leftover tasks: {set(tasks_after) - set(tasks_before)}"
    assert await wait_until(lambda: counted_threads() <= threads_before, timeout=5), thread_names()
    assert server.app.state.sessions.failed == failed_before
    assert (await engine.health_check())["active_streams"] == 0


class FlakyTranscriber(Transcriber):
    """The real faster-whisper transcriber; final transcripts fail while ``failing``."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.failing = False
        self.failures = 0

    async def transcribe(self, audio: np.ndarray, priority: int = Transcriber.FINAL) -> Transcript:
        if self.failing and priority == Transcriber.FINAL:
            self.failures += 1
            raise RuntimeError("injected speech recognition failure")
        return await super().transcribe(audio, priority)


def _bot_said(client: VoiceClient, after: float = 0.0) -> str:
    return " ".join(t for ts, t in client.events.bot_text if ts >= after).lower()


async def _wait_said(client: VoiceClient, words: str, timeout: float = 15.0) -> None:
    try:
        await client.wait_for(lambda: words in _bot_said(client), timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"the bot never said {words!r}: {client.events.bot_text}") from None


async def test_stt_failure_is_announced_and_the_next_turn_works(bot_server, user_speech) -> None:
    server, _engine, _backend = bot_server
    models = server.app.state.models
    original = models.transcriber
    flaky = FlakyTranscriber(original.model)
    models.transcriber = flaky  # pipelines built from now on use it
    try:
        async with VoiceClient(ws_url(server)) as client:
            await asyncio.sleep(0.3)
            flaky.failing = True
            utt = await client.say(user_speech["question"])
            errors = await client.wait_for(lambda: client.events.errors, timeout=20)
            assert flaky.failures >= 1
            assert any("recogni" in e.lower() for _, e in errors), errors
            # The bot says so, out loud.
            await client.wait_bot_audio(utt.end, timeout=20)
            # The text of what the bot says may arrive after its first audio.
            await _wait_said(client, "catch")
            assert not client.final_transcripts(), "a transcript despite the failure"
            await client.wait_bot_quiet(quiet_secs=1.0, timeout=30)

            flaky.failing = False
            start = time.monotonic()
            await _turn(client, user_speech["hello"])
            finals = client.final_transcripts(after=start)
            assert finals and "hear" in finals[-1].lower(), finals
            # Answered: the offline responder always says what it heard ("hear").
            await client.wait_for(lambda: "hear" in _bot_said(client, start), timeout=20)
    finally:
        models.transcriber = original
        flaky.close()


def fake_llm_app(fail_word: str) -> FastAPI:
    """An OpenAI-compatible chat endpoint: 500 when the user says ``fail_word``."""
    app = FastAPI()
    app.state.requests = 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        app.state.requests += 1
        body = await request.json()
        content = next(
            (m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), ""
        )
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if fail_word in content.lower():
            return JSONResponse(
                {"error": {"message": "injected LLM failure", "type": "server_error"}}, 500
            )
        reply = f"You said {content.strip().rstrip('.?!')}. That is all I know."

        def chunk(delta: dict, finish: str | None = None) -> str:
            body_ = {
                "id": "fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(body_)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            for word in reply.split(" "):
                yield chunk({"content": word + " "})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def test_llm_failure_is_announced_and_the_next_turn_works(bot_server, user_speech) -> None:
    from pipecat_vibevoice.pipeline import BotConfig

    server, _engine, _backend = bot_server
    llm = LoopServer(fake_llm_app("time")).start()
    bot = start_bot_server(
        BotConfig(llm_url=f"http://127.0.0.1:{llm.port}/v1", llm_model="fake"),
        models=server.app.state.models,
    )
    try:
        async with VoiceClient(ws_url(bot)) as client:
            await asyncio.sleep(0.3)
            utt = await client.say(user_speech["question"])  # "what time ..." → 500
            errors = await client.wait_for(lambda: client.events.errors, timeout=30)
            assert llm.app.state.requests >= 1
            assert any("llm" in e.lower() or "500" in e for _, e in errors), errors
            await client.wait_bot_audio(utt.end, timeout=20)
            await _wait_said(client, "sorry")
            await client.wait_bot_quiet(quiet_secs=1.0, timeout=30)

            start = time.monotonic()
            await _turn(client, user_speech["hello"])
            await client.wait_for(lambda: "you said" in _bot_said(client, start), timeout=20)
        assert await wait_until(lambda: live_sessions(bot) == 0)
        assert bot.app.state.sessions.failed == 0
    finally:
        bot.stop()
        llm.stop()
