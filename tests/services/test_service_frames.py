"""Frames of a spoken utterance: order, format, chunk size, metrics, engine sources."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData, TTSUsageMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import run_test
from services.service_helpers import audio_frames, shape

from pipecat_vibevoice.engine import TTSConfig, TTSEngine, shutdown_tts_engine
from pipecat_vibevoice.services import VibeVoiceTTSService

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


async def test_speak_frame_gives_started_audio_stopped_in_order(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine)
    down, up = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame(TEXT)],
        pipeline_params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        start_timeout=10,
    )
    assert not up, f"unexpected upstream frames: {up}"
    names = shape(down)
    assert names[:3] == ["AggregatedTextFrame", "TTSStartedFrame", "TTSAudioRawFrame"]
    assert names[-2:] == ["LLMAssistantPushAggregationFrame", "TTSStoppedFrame"]
    # Between them the audio, and each word behind the audio it starts in (with the
    # RTVI progress of the sentence), timed for the output transport to release.
    assert set(names[2:-2]) == {"TTSAudioRawFrame", "TTSTextFrame", "AggregatedTextProgressFrame"}
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text for f in words] == TEXT.split()
    pts = [f.pts for f in words]
    assert all(pts) and pts == sorted(pts) and len(set(pts)) == len(pts)
    started = next(f for f in down if isinstance(f, TTSStartedFrame))
    stopped = next(f for f in down if isinstance(f, TTSStoppedFrame))
    audio = audio_frames(down)
    assert {f.context_id for f in audio} == {started.context_id} == {stopped.context_id}
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(24000, 1)}
    # Engine chunks pass through unchanged: 80 ms = 1920 samples, the last one shorter.
    assert {len(f.audio) for f in audio[:-1]} == {3840}
    assert 0 < len(audio[-1].audio) <= 3840 and len(audio[-1].audio) % 2 == 0
    seconds = sum(len(f.audio) for f in audio) / 2 / 24000
    assert 2.0 < seconds < 8.0

    # Pipecat reports zeroed metrics at start; the utterance's come after TTSStartedFrame.
    started_index = down.index(started)
    metrics = [d for f in down[started_index:] if isinstance(f, MetricsFrame) for d in f.data]
    ttfb = [d for d in metrics if isinstance(d, TTFBMetricsData)]
    # Usage is reported as synthesis starts, which may be before TTSStartedFrame is out.
    usage = [
        d
        for f in down
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, TTSUsageMetricsData) and d.value
    ]
    assert len(ttfb) == 1 and 0.0 < ttfb[0].value < 2.0
    assert ttfb[0].model == "piper"
    assert [u.value for u in usage] == [len(TEXT)]
    # The TTFB metric is reported before the first audio frame (it stops on it).
    first_audio = next(i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame))
    ttfb_index = next(
        i
        for i, f in enumerate(down)
        if isinstance(f, MetricsFrame) and any(isinstance(d, TTFBMetricsData) for d in f.data)
    )
    assert ttfb_index < first_audio


async def test_config_constructor_uses_process_engine_and_its_chunk_size() -> None:
    await shutdown_tts_engine()
    try:
        tts = VibeVoiceTTSService(TTSConfig(engine="piper", chunk_ms=40, sample_rate=16000))
        down, up = await run_test(
            tts, frames_to_send=[TTSSpeakFrame("Forty millisecond chunks.")], start_timeout=30
        )
        assert not up
        audio = audio_frames(down)
        assert {f.sample_rate for f in audio} == {16000}
        assert {len(f.audio) for f in audio[:-1]} == {640 * 2}
        assert tts.engine is not None and tts.engine.config.chunk_ms == 40
    finally:
        await shutdown_tts_engine()


async def test_other_output_rate_is_resampled(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine, sample_rate=16000)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame(TEXT)], start_timeout=10)
    audio = audio_frames(down)
    assert {f.sample_rate for f in audio} == {16000}
    seconds = sum(len(f.audio) for f in audio) / 2 / 16000
    assert 2.0 < seconds < 8.0


async def test_start_loads_engine_resolves_voice_and_warms_up() -> None:
    engine = TTSEngine(TTSConfig(engine="piper"))
    try:
        assert not engine.is_initialized
        tts = VibeVoiceTTSService(engine)
        await run_test(tts, frames_to_send=[], start_timeout=30)
        assert engine.is_initialized
        assert tts.settings.voice == "en_US-joe-medium"
        assert tts.settings.model == "piper"
        # The warm-up went through the engine once (plus the engine's own warm-up).
        health = await engine.health_check()
        assert health["utterances"] >= 1
    finally:
        await engine.cleanup()


def test_constructor_rejects_bad_arguments(piper_engine: TTSEngine) -> None:
    with pytest.raises(ValueError, match="speed"):
        VibeVoiceTTSService(piper_engine, settings=VibeVoiceTTSService.Settings(speed=3.0))
    with pytest.raises(ValueError, match="either"):
        VibeVoiceTTSService(piper_engine, config=TTSConfig(engine="piper"))
    with pytest.raises(TypeError):
        VibeVoiceTTSService("piper")  # type: ignore[arg-type]
    # Token mode speaks a turn as one request, which needs one context per turn.
    tts = VibeVoiceTTSService(
        piper_engine,
        text_aggregation_mode=TextAggregationMode.TOKEN,
        reuse_context_id_within_turn=False,
    )
    assert tts._reuse_context_id_within_turn


async def test_each_pull_tells_the_engine_pool_when_the_listener_runs_dry(
    piper_engine: TTSEngine,
) -> None:
    """The bot's conversations share one engine pool ordered by these deadlines.

    The pulls of a reply before its first chunk are first chunks (its listener has
    nothing yet), all with the deadline fixed when the reply opened; every later one
    carries when the audio sent so far runs out, which is never later than now plus the
    audio sent.
    """
    import time

    from pipecat_vibevoice.engine.scheduling import (
        FIRST_CHUNK_SLACK_S,
        DeadlineExecutor,
        current_pull_deadline,
    )

    class RecordingPool(DeadlineExecutor):
        def __init__(self) -> None:
            super().__init__(1)
            self.seen: list[tuple[float, float | None, bool]] = []

        def submit(self, fn, /, *args, **kwargs):
            self.seen.append((time.perf_counter(), *current_pull_deadline()))
            return super().submit(fn, *args, **kwargs)

    pool = RecordingPool()
    previous = piper_engine.replace_executor(pool)
    try:
        tts = VibeVoiceTTSService(piper_engine)
        down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame(TEXT)], start_timeout=10)
    finally:
        piper_engine.replace_executor(previous)
        pool.shutdown()
    seconds = sum(len(f.audio) for f in audio_frames(down)) / 2 / 24000
    model_pulls = [(at, d, first) for at, d, first in pool.seen if d is not None]
    assert model_pulls, "no pull carried a deadline"
    # Piper's front half and first window are two pulls, both before the first chunk.
    starting = [p for p in model_pulls if p[2]]
    assert starting == model_pulls[: len(starting)] and len(starting) < len(model_pulls)
    # One deadline for all of them: a first chunk does not drift later with each call.
    assert len({deadline for _, deadline, _ in starting}) == 1
    first_at, first_deadline, _ = starting[0]
    assert first_at - 0.5 < first_deadline <= first_at + FIRST_CHUNK_SLACK_S
    playing = model_pulls[len(starting) :]
    assert all(d <= at + seconds + 0.5 for at, d, _ in playing)
    # Deadlines move out as audio is sent ahead of the listener.
    assert playing[-1][1] > playing[0][1]
