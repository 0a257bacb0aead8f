"""The engine on the real bundled Piper voice: format, controls, batch, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc

import numpy as np
import pytest
from audio_analysis import as_float, median_f0

from pipecat_vibevoice.engine import (
    EmptyTextError,
    TextTooLongError,
    TTSConfig,
    TTSEngine,
    UnknownVoiceError,
)

SENTENCE = (
    "The little boat drifted slowly across the quiet harbor while the fishermen "
    "sang an old song about the sea and the morning light."
)


async def collect(engine: TTSEngine, text: str = SENTENCE, **kwargs) -> list[bytes]:
    return [chunk async for chunk in engine.synthesize_streaming(text, **kwargs)]


async def test_chunks_are_pcm16_at_the_configured_rate_and_size(piper_engine: TTSEngine) -> None:
    chunks = await collect(piper_engine)
    assert len(chunks) > 10
    assert all(isinstance(c, bytes) for c in chunks)
    assert {len(c) for c in chunks[:-1]} == {1920 * 2}  # 80 ms at 24 kHz, 16-bit
    assert 0 < len(chunks[-1]) <= 3840 and len(chunks[-1]) % 2 == 0
    audio = as_float(b"".join(chunks))
    assert 4.0 < audio.size / 24000 < 12.0
    assert np.sqrt(np.mean(audio**2)) > 0.02  # it is speech, not silence


async def test_other_sample_rate_and_chunk_duration() -> None:
    engine = TTSEngine(TTSConfig(engine="piper", sample_rate=16000, chunk_ms=20))
    try:
        chunks = await collect(engine, "Short test at sixteen kilohertz.")
        assert {len(c) for c in chunks[:-1]} == {320 * 2}
        reference = await collect(engine, "Short test at sixteen kilohertz.")
        # same text, same rate: durations agree within Piper's duration noise
        assert sum(map(len, chunks)) == pytest.approx(sum(map(len, reference)), rel=0.1)
    finally:
        await engine.cleanup()


async def test_streaming_off_gives_one_chunk() -> None:
    engine = TTSEngine(TTSConfig(engine="piper", streaming=False))
    try:
        chunks = await collect(engine, "One piece, please.")
        assert len(chunks) == 1 and len(chunks[0]) > 24000
    finally:
        await engine.cleanup()


@pytest.mark.parametrize(
    "windows", [None, (48, 96, 256, 512), (7,)], ids=["default", "large", "tiny"]
)
def test_decoder_windows_join_into_the_full_decode(
    piper_engine: TTSEngine, windows: tuple[int, ...] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming must not change the waveform: windows == one full vocoder pass, for any
    window schedule (``TTSConfig.piper_windows``)."""
    import threading

    backend = piper_engine.backend
    if windows:
        monkeypatch.setattr(backend, "schedule", windows)
    ids = backend.phoneme_ids(SENTENCE)[0]
    latent, mask = backend._run_frontend(ids, backend._scales)
    full = backend.decode_full(latent, mask)
    windows = np.concatenate(
        [p.audio for p in backend._decode_windows(latent, mask, threading.Event())]
    )
    assert windows.size == full.size
    # A truncated receptive field would show as clicks of 1e-2 and more at the window
    # edges. What remains is float32 rounding of the vocoder's convolutions on inputs of
    # other lengths (ONNX Runtime tiles them differently): output |y| <= 1 through ~10
    # layers of reductions over <= 512 channels x 7 taps gives at most a few 1e-6 here.
    # 1e-4 is 3 PCM16 steps: the bound a listener or the int16 output could tell apart.
    assert np.max(np.abs(windows - np.clip(full, -1, 1))) < 1e-4


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
async def test_duration_scales_with_inverse_speed(piper_engine: TTSEngine, speed: float) -> None:
    base = np.mean([sum(map(len, await collect(piper_engine))) for _ in range(2)])
    fast = np.mean([sum(map(len, await collect(piper_engine, speed=speed))) for _ in range(2)])
    assert fast / base == pytest.approx(1 / speed, rel=0.10)


@pytest.mark.parametrize("pitch", [0.7, 1.4, 2.0])
async def test_pitch_changes_fundamental_by_the_ratio(
    piper_engine: TTSEngine, pitch: float
) -> None:
    base = as_float(b"".join(await collect(piper_engine)))
    shifted = as_float(b"".join(await collect(piper_engine, pitch=pitch)))
    ratio = median_f0(shifted, 24000, fmin=40) / median_f0(base, 24000, fmin=40)
    assert ratio == pytest.approx(pitch, rel=0.10)
    # pitch alone keeps the tempo
    assert shifted.size / base.size == pytest.approx(1.0, rel=0.10)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"speed": 0.4}, ValueError, "minimum of 0.5"),
        ({"speed": 2.5}, ValueError, "maximum of 2.0"),
        ({"pitch": 0.1}, ValueError, "minimum of 0.5"),
        ({"pitch": 3.0}, ValueError, "maximum of 2.0"),
        ({"speaker_id": "nobody"}, UnknownVoiceError, "en_US-joe-medium"),
        ({"speaker_id": 7}, UnknownVoiceError, "out of range"),
    ],
)
async def test_bad_controls_raise_before_audio(piper_engine, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        await collect(piper_engine, "Hello.", **kwargs)


async def test_seed_makes_the_voice_reproducible(piper_engine: TTSEngine) -> None:
    """Same seed, same samples (every sentence); no seed, fresh noise every call."""
    text = "The same seed. The same voice."
    first = await piper_engine.synthesize(text, seed=11)
    again = await piper_engine.synthesize(text, seed=11)
    other = await piper_engine.synthesize(text, seed=12)
    assert np.array_equal(first, again)
    assert other.size != first.size or not np.array_equal(other, first)
    free = [await piper_engine.synthesize(text) for _ in range(2)]
    assert free[0].size != free[1].size or not np.array_equal(free[0], free[1])
    # The seeded path is the same voice: same length within what duration noise moves.
    assert abs(free[0].size - first.size) < 0.25 * first.size


async def test_voice_by_name_and_index(piper_engine: TTSEngine) -> None:
    voices = await piper_engine.get_available_speakers()
    assert voices == ["en_US-joe-medium"]
    assert await collect(piper_engine, "By name.", speaker_id="EN_US-JOE-MEDIUM")
    assert await collect(piper_engine, "By index.", speaker_id=0)


@pytest.mark.parametrize("text", ["", "   \n\t "])
async def test_empty_text_is_an_error(piper_engine: TTSEngine, text: str) -> None:
    with pytest.raises(EmptyTextError):
        await collect(piper_engine, text)


async def test_text_over_the_limit_is_refused() -> None:
    engine = TTSEngine(TTSConfig(engine="piper", max_text_chars=50))
    try:
        with pytest.raises(TextTooLongError):
            await collect(engine, "word " * 20)
    finally:
        await engine.cleanup()


@pytest.mark.parametrize(
    "text", ["Привет, как дела?", "日本語のテキストです。", "🎉🎉🎉", "Hello 👋 world, ça va?"]
)
async def test_non_latin_text_and_emoji_do_not_crash(piper_engine: TTSEngine, text: str) -> None:
    chunks = await collect(piper_engine, text)
    assert all(len(c) % 2 == 0 for c in chunks)


async def test_long_text_streams_in_bounded_memory(piper_engine: TTSEngine) -> None:
    """20 000 characters: audio starts at once and memory does not grow with the text."""
    text = (SENTENCE + " ") * (20_000 // (len(SENTENCE) + 1))
    assert len(text) >= 19_000
    tracemalloc.start()
    try:
        received = 0
        stream = piper_engine.synthesize_streaming(text)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                received += len(chunk)
                if received >= 24000 * 2 * 30:  # 30 s of audio, several segments deep
                    break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received >= 24000 * 2 * 30
    # The whole utterance would be ~20 min of audio (~55 MB of PCM); we hold far less.
    assert peak < 20 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"


async def test_closing_the_stream_stops_the_model_within_one_chunk(piper_engine: TTSEngine) -> None:
    backend = piper_engine.backend
    produced = {"after_close": 0}
    closed = asyncio.Event()
    original = backend.stream

    def counting_stream(request):
        for piece in original(request):
            if closed.is_set():
                produced["after_close"] += 1
            yield piece

    backend.stream = counting_stream  # type: ignore[method-assign]
    try:
        stream = piper_engine.synthesize_streaming(SENTENCE * 5)
        first = await stream.__anext__()
        assert first
        closed.set()
        await stream.aclose()
        await asyncio.sleep(0.5)  # give any runaway worker time to show itself
    finally:
        backend.stream = original  # type: ignore[method-assign]
    assert produced["after_close"] <= 1


async def test_cancelling_the_consumer_task_stops_generation(piper_engine: TTSEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in piper_engine.synthesize_streaming(SENTENCE * 10):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await piper_engine.health_check())["active_streams"] == 0


async def test_batch_keeps_order_and_reports_failures(piper_engine: TTSEngine) -> None:
    texts = [
        "One.",
        "",
        "Three words here.",
        "A much longer fourth sentence with many words in it.",
    ]
    ids: list = [0, 0, "nobody", 0]
    progress: list[tuple[int, int]] = []
    result = await piper_engine.synthesize_batch(
        texts, ids, on_progress=lambda d, t: progress.append((d, t))
    )
    assert len(result) == 4
    assert result.failed() == [1, 2]
    assert isinstance(result.errors[1], EmptyTextError)
    assert isinstance(result.errors[2], UnknownVoiceError)
    assert result[1].size == 0 and result[2].size == 0
    assert result[0].dtype == np.int16 and 0 < result[0].size < result[3].size
    assert progress[-1] == (4, 4) and len(progress) == 4


async def test_batch_rejects_mismatched_speaker_ids(piper_engine: TTSEngine) -> None:
    with pytest.raises(ValueError, match="speaker_ids"):
        await piper_engine.synthesize_batch(["a", "b"], [0])


async def test_health_check_reports_the_engine(piper_engine: TTSEngine) -> None:
    health = await piper_engine.health_check()
    assert health["status"] == "ok"
    assert health["model"] == "en_US-joe-medium"
    assert health["streaming_enabled"] is True
    assert health["sample_rate"] == 24000
