"""Sessions and lifecycle: a shared engine, loading failures, uninterruptible speech, ends."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from services.service_helpers import (
    InterruptAfterAudio,
    PieceCounter,
    audio_bytes_by_context,
    audio_frames,
    shape,
)

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.services import VibeVoiceTTSService

TEXT = "Two sessions can share one model without hearing each other at all."
Settings = VibeVoiceTTSService.Settings


async def test_two_sessions_share_one_engine_with_their_own_settings(
    piper_engine: TTSEngine,
) -> None:
    slow = VibeVoiceTTSService(piper_engine, warmup=False)
    fast = VibeVoiceTTSService(piper_engine, warmup=False, settings=Settings(speed=1.8))
    (slow_down, slow_up), (fast_down, fast_up) = await asyncio.gather(
        run_test(slow, frames_to_send=[TTSSpeakFrame(TEXT)], start_timeout=10),
        run_test(fast, frames_to_send=[TTSSpeakFrame(TEXT)], start_timeout=10),
    )
    assert not [f for f in slow_up + fast_up if isinstance(f, ErrorFrame)]
    [slow_bytes] = audio_bytes_by_context(slow_down).values()
    [fast_bytes] = audio_bytes_by_context(fast_down).values()
    assert fast_bytes < 0.7 * slow_bytes, (slow_bytes, fast_bytes)
    # Each session only ever sees its own context.
    assert not {f.context_id for f in audio_frames(slow_down)} & {
        f.context_id for f in audio_frames(fast_down)
    }
    assert piper_engine.is_initialized  # sessions never unload the shared engine


async def test_engine_that_cannot_load_makes_the_service_unusable(tmp_path: Path) -> None:
    config = TTSConfig(engine="vibevoice", model_path=str(tmp_path / "missing"), load_retries=1)
    engine = TTSEngine(config)
    tts = VibeVoiceTTSService(engine)
    _, up = await run_test(tts, frames_to_send=[], start_timeout=30)
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert "could not be loaded" in error.error and "vibevoice" in error.error
    assert not tts.is_usable


@pytest.mark.parametrize("mode", list(TextAggregationMode))
async def test_uninterruptible_speech_survives_an_interruption(
    piper_engine: TTSEngine, mode: TextAggregationMode
) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=mode)
    keep = TTSSpeakFrame(TEXT + " " + TEXT)
    keep.interruptible = False
    interrupter = InterruptAfterAudio(tts)
    with PieceCounter(piper_engine) as counter:
        down, _ = await run_test(
            tts,
            frames_to_send=[keep, SleepFrame(sleep=1.5)],
            observers=[interrupter],
            start_timeout=10,
        )
    assert interrupter.sent_at is not None
    assert counter.closed_early == 0 and counter.exhausted >= 1  # synthesis ran to the end
    seconds = sum(len(f.audio) for f in audio_frames(down)) / 48000
    assert seconds > 6.0  # all of it, not just the part made before the interruption
    assert shape(down).count("TTSStoppedFrame") == 1


async def test_end_frame_in_the_middle_of_a_token_turn_speaks_what_came(
    piper_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(
        piper_engine, warmup=False, text_aggregation_mode=TextAggregationMode.TOKEN
    )
    # No LLMFullResponseEndFrame: run_test's EndFrame ends the turn.
    down, up = await run_test(
        tts,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            *[LLMTextFrame(t) for t in ["The", " pipeline", " ends", " here", "."]],
        ],
        start_timeout=10,
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert audio_frames(down) and any(isinstance(f, TTSStoppedFrame) for f in down)
    assert not tts._token_turns


@pytest.mark.parametrize("mode", list(TextAggregationMode))
async def test_finished_sessions_leave_nothing_behind(
    piper_engine: TTSEngine, mode: TextAggregationMode
) -> None:
    # The engine is shared for the life of the process: nothing of a finished
    # session may stay reachable from it (slow per-session memory growth).
    refs = []
    for _ in range(2):
        tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=mode)
        await run_test(
            tts,
            frames_to_send=[
                TTSSpeakFrame("One."),
                LLMFullResponseStartFrame(),
                LLMTextFrame("Two."),
                LLMFullResponseEndFrame(),
            ],
            start_timeout=10,
        )
        assert not tts._token_turns
        assert not tts._refused_contexts
        refs.append(weakref.ref(tts))
        del tts
    gc.collect()
    # The latest run's pipeline may still be referenced by the loop; the one before
    # it must be gone.
    assert refs[0]() is None, "a finished session's service is still alive"


async def test_unknown_configured_voice_is_reported_at_start_and_default_used(
    piper_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(piper_engine, settings=Settings(voice="nobody"), warmup=False)
    down, up = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hi.")], start_timeout=10)
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert "nobody" in error.error and "en_US-joe-medium" in error.error
    assert tts.settings.voice == "en_US-joe-medium"
    assert audio_frames(down) and tts.is_usable
