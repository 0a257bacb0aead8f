"""The Pipecat service on VibeVoice-1.5B: a voice from a clip as the runtime voice setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.tests.utils import run_test

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.services import VibeVoiceTTSService

from .conftest import engine_config, speech_like
from .tiny_model import SAMPLE_RATE

Settings = VibeVoiceTTSService.Settings


def turn(text: str) -> list:
    return [LLMFullResponseStartFrame(), LLMTextFrame(text), LLMFullResponseEndFrame()]


@pytest.fixture
async def engine(tiny_checkpoint: Path):
    engine = TTSEngine(engine_config(tiny_checkpoint, inference_steps=1))
    await engine.initialize()
    await engine.add_voice("first", speech_like(3.0, seed=1), SAMPLE_RATE)
    await engine.add_voice("second", speech_like(3.0, seed=2), SAMPLE_RATE)
    yield engine
    await engine.cleanup()


async def test_the_runtime_voice_setting_picks_a_voice_made_from_a_clip(engine: TTSEngine) -> None:
    voices: list[str] = []
    original = engine.backend.stream

    def stream(request):
        voices.append(request.voice)
        yield from original(request)

    engine.backend.stream = stream
    tts = VibeVoiceTTSService(
        engine,
        settings=Settings(voice="FIRST"),
        engine_options={"max_latents": 2, "seed": 1},
        warmup=False,
    )
    down, up = await run_test(
        tts,
        frames_to_send=[
            *turn("Hello there."),
            TTSUpdateSettingsFrame(delta=Settings(voice="second")),
            *turn("Hello again."),
            TTSUpdateSettingsFrame(delta=Settings(voice="nobody")),  # refused, "second" stays
            *turn("Still me."),
        ],
        start_timeout=30,
    )
    assert voices == ["first", "second", "second"]
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "voice" in errors[0].error
    assert [f for f in down if isinstance(f, TTSAudioRawFrame)]
