"""Runtime settings and errors: updates take effect, bad values and failures become ErrorFrames."""

from __future__ import annotations

from audio_analysis import as_float, median_f0
from pipecat.frames.frames import (
    ErrorFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.tests.utils import run_test
from pipecat.utils.errors import ErrorCategory
from services.service_helpers import (
    PieceCounter,
    Timeline,
    audio_by_context,
    audio_bytes_by_context,
)

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.services import VibeVoiceTTSService

TEXT = "Seven silver swans swam silently across the shimmering lake at dawn."
Settings = VibeVoiceTTSService.Settings


def errors(up) -> list[ErrorFrame]:
    return [f for f in up if isinstance(f, ErrorFrame)]


async def test_speed_update_shortens_the_next_utterance(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSSpeakFrame(TEXT),
            TTSUpdateSettingsFrame(delta=Settings(speed=1.6)),
            TTSSpeakFrame(TEXT),
        ],
        start_timeout=10,
    )
    assert not errors(up)
    normal, fast = audio_bytes_by_context(down).values()
    # Piper's length scale: 1.6x speed is ~1/1.6 of the duration (some pause is fixed).
    assert fast < 0.75 * normal, (normal, fast)
    assert tts.settings.speed == 1.6


async def test_pitch_update_is_applied_and_keeps_duration(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSSpeakFrame(TEXT),
            TTSUpdateSettingsFrame(delta=Settings(pitch=1.3)),
            TTSSpeakFrame(TEXT),
        ],
        start_timeout=10,
    )
    assert not errors(up)
    normal, high = (as_float(pcm) for pcm in audio_by_context(down).values())
    assert abs(high.size - normal.size) < 0.15 * normal.size  # pitch, not tempo
    ratio = median_f0(high, 24000) / median_f0(normal, 24000)
    assert 1.15 < ratio < 1.45, ratio
    assert tts.settings.pitch == 1.3


async def test_unknown_voice_is_refused_and_next_utterance_still_works(
    piper_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(piper_engine)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=Settings(voice="no-such-voice")),
            TTSSpeakFrame("Still speaking after a bad voice."),
        ],
        start_timeout=10,
    )
    [error] = errors(up)
    assert "no-such-voice" in error.error and "en_US-joe-medium" in error.error
    assert error.category is ErrorCategory.APPLICATION  # not a permanent service fault
    assert tts.is_usable
    assert tts.settings.voice == "en_US-joe-medium"
    [spoken] = audio_bytes_by_context(down).values()
    assert spoken > 24000  # > 0.5 s of audio


async def test_voice_update_by_index_and_partial_name(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine)
    _, up = await run_test(
        tts,
        frames_to_send=[TTSUpdateSettingsFrame(delta=Settings(voice="JOE"))],
        start_timeout=10,
    )
    assert not errors(up)
    assert tts.settings.voice == "en_US-joe-medium"


async def test_out_of_range_values_are_refused_with_the_cause(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=Settings(speed=5.0)),
            TTSUpdateSettingsFrame(delta=Settings(pitch=0.1)),
            TTSUpdateSettingsFrame(delta=Settings(cfg_scale=0.0)),
            TTSUpdateSettingsFrame(delta=Settings(inference_steps=0)),
            TTSUpdateSettingsFrame(delta=Settings(speed=1.2, cfg_scale=2.0, inference_steps=8)),
            TTSSpeakFrame("The good values stay."),
        ],
        start_timeout=10,
    )
    messages = [e.error for e in errors(up)]
    assert len(messages) == 4, messages
    assert "speed" in messages[0] and "2.0" in messages[0]
    assert "pitch" in messages[1] and "0.5" in messages[1]
    assert "cfg_scale" in messages[2]
    assert "inference_steps" in messages[3]
    assert (tts.settings.speed, tts.settings.pitch) == (1.2, 1.0)
    assert (tts.settings.cfg_scale, tts.settings.inference_steps) == (2.0, 8)
    assert tts.is_usable
    assert sum(audio_bytes_by_context(down).values()) > 0


async def test_engine_failure_becomes_error_frame_and_service_recovers(
    piper_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False)
    timeline = Timeline(tts)
    with PieceCounter(piper_engine, fail_first=1):
        down, up = await run_test(
            tts,
            frames_to_send=[TTSSpeakFrame("This one fails."), TTSSpeakFrame("This one works.")],
            observers=[timeline],
            start_timeout=10,
        )
    # The failed context is closed at once: it does not hold the next utterance
    # for Pipecat's 3 s no-audio timeout.
    delay = timeline.first_pushed(TTSAudioRawFrame) - timeline.first_processed(TTSSpeakFrame)
    assert delay < 2.8, f"next utterance delayed {delay:.2f}s by the failed one"
    failures = [e for e in errors(up) if "injected backend fault" in e.error]
    assert len(failures) == 1
    assert failures[0].category is ErrorCategory.SERVER
    assert isinstance(failures[0].exception, RuntimeError)
    assert tts.is_usable
    # Only the second utterance has audio.
    assert len(audio_bytes_by_context(down)) == 1


async def test_text_the_engine_refuses_becomes_error_frame(piper_engine: TTSEngine) -> None:
    from pipecat_vibevoice.engine import TTSConfig

    engine = TTSEngine(TTSConfig(engine="piper", max_text_chars=20))
    try:
        tts = VibeVoiceTTSService(engine, warmup=False)
        down, up = await run_test(
            tts,
            frames_to_send=[
                TTSSpeakFrame("This sentence is far longer than twenty characters."),
                TTSSpeakFrame("Short one."),
            ],
            start_timeout=30,
        )
        refused = [e for e in errors(up) if "limit of 20" in e.error]
        assert len(refused) == 1 and refused[0].category is ErrorCategory.APPLICATION
        assert len(audio_bytes_by_context(down)) == 1
        assert tts.is_usable
    finally:
        await engine.cleanup()


async def test_refused_requests_never_write_the_service_off(piper_engine: TTSEngine) -> None:
    # Pipecat marks a TTS unusable after 3 silent contexts in a row; refused input
    # is the caller's fault and must not count.
    from pipecat_vibevoice.engine import TTSConfig

    engine = TTSEngine(TTSConfig(engine="piper", max_text_chars=20))
    try:
        tts = VibeVoiceTTSService(engine, warmup=False)
        too_long = "This sentence is far longer than twenty characters."
        down, up = await run_test(
            tts,
            frames_to_send=[TTSSpeakFrame(too_long) for _ in range(4)]
            + [TTSSpeakFrame("Short one.")],
            start_timeout=30,
        )
        assert len([e for e in errors(up) if "limit of 20" in e.error]) == 4
        assert not [e for e in errors(up) if "no audio" in e.error]
        assert tts.is_usable
        assert len(audio_bytes_by_context(down)) == 1
    finally:
        await engine.cleanup()
