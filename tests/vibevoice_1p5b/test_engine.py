"""VibeVoice-1.5B through the engine, on a tiny random checkpoint (CPU, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.engine.backends.base import SynthesisRequest
from pipecat_vibevoice.engine.backends.vibevoice_1p5b import UNPROMPTED
from pipecat_vibevoice.engine.errors import (
    ClipTooLongError,
    ClipTooShortError,
    SampleRateError,
    SilentClipError,
    UnknownVoiceError,
    VoiceCloningUnsupportedError,
    VoiceError,
    VoiceNameError,
)
from pipecat_vibevoice.engine.voices import METADATA_FILE
from pipecat_vibevoice.wav import write_wav

from .conftest import engine_config, speech_like
from .tiny_model import HOP, SAMPLE_RATE


@pytest.fixture
async def engine(tiny_checkpoint: Path):
    engine = TTSEngine(engine_config(tiny_checkpoint))
    await engine.initialize()
    yield engine
    await engine.cleanup()


class DecodeCounter:
    """Counts the acoustic decoder's calls: one per latent the model makes."""

    def __init__(self, backend) -> None:
        tower = backend.checkpoint.model.model.audio_tower
        self.calls = 0
        original = tower.decode

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        tower.decode = counted


async def test_the_engine_loads_the_directory_and_reports_it(
    engine: TTSEngine, tiny_checkpoint: Path
) -> None:
    health = await engine.health_check()
    assert health["status"] == "ok"
    assert health["engine"] == "vibevoice-1.5b" and health["model"] == "VibeVoice-1.5B"
    assert health["model_path"] == str(tiny_checkpoint) and health["device"] == "cpu"
    assert health["dtype"] == "float32" and health["voices_from_audio"] is True
    assert await engine.get_available_speakers() == [UNPROMPTED]


async def test_speech_streams_in_several_pcm16_chunks_at_24khz(
    engine: TTSEngine, clip: np.ndarray
) -> None:
    await engine.add_voice("ref", clip, SAMPLE_RATE)
    assert await engine.get_available_speakers() == ["ref", UNPROMPTED]
    chunks = [c async for c in engine.stream_chunks("Hello there.", "ref", seed=1, max_latents=5)]
    size = engine.config.chunk_samples * 2
    assert engine.config.sample_rate == SAMPLE_RATE
    assert len(chunks) >= 3
    assert all(len(c.pcm) == size for c in chunks[:-1]) and 0 < len(chunks[-1].pcm) <= size
    pcm = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
    assert pcm.size == 5 * HOP  # five latents of 3200 samples, no resampling at 24 kHz
    assert np.abs(pcm).max() > 1000  # sound, not zeros
    words = [w for c in chunks for w in c.words]
    assert [w for w, _ in words] == ["Hello", "there."]  # every word is placed once


async def test_the_same_seed_gives_the_same_audio_and_another_voice_other_audio(
    engine: TTSEngine, clip: np.ndarray
) -> None:
    await engine.add_voice("a", clip, SAMPLE_RATE)
    await engine.add_voice("b", speech_like(3.0, seed=5), SAMPLE_RATE)
    one = await engine.synthesize("Same words.", "a", seed=3, max_latents=3)
    two = await engine.synthesize("Same words.", "a", seed=3, max_latents=3)
    other = await engine.synthesize("Same words.", "b", seed=3, max_latents=3)
    np.testing.assert_array_equal(one, two)
    assert np.abs(one.astype(int) - other).max() > 1000


async def test_stop_is_honoured_within_one_latent(engine: TTSEngine, clip: np.ndarray) -> None:
    await engine.add_voice("ref", clip, SAMPLE_RATE)
    backend = engine.backend
    counter = DecodeCounter(backend)
    # The backend: a stop set after the first latent ends the stream before another.
    request = SynthesisRequest(
        text="A long sentence to speak.", voice="ref", options={"max_latents": 20}
    )
    stream = backend.stream(request)
    next(stream)
    request.stop.set()
    assert list(stream) == [] and counter.calls == 1
    # The engine: closing the stream after its first chunk leaves at most the latent in flight.
    counter.calls = 0
    chunks = engine.stream_chunks("A long sentence to speak.", "ref", max_latents=20)
    first = await anext(chunks)
    assert first.pcm
    await chunks.aclose()
    await _drained(engine)
    assert counter.calls <= 2  # the one that made the first chunk, and at most one in flight


async def _drained(engine: TTSEngine) -> None:
    """Wait until the worker pool has run everything queued (the generator's close)."""
    import asyncio

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(engine.executor, lambda: None)


async def test_bad_clips_are_refused_with_clear_errors(engine: TTSEngine) -> None:
    cases = [
        (speech_like(1.0), SAMPLE_RATE, ClipTooShortError, "at least 2 s"),
        (speech_like(61.0, rate=8000), 8000, ClipTooLongError, "at most 60 s"),
        (np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE, SilentClipError, "silent"),
        (speech_like(3.0), 3000, SampleRateError, "cannot be resampled"),
    ]
    for audio, rate, error, words in cases:
        with pytest.raises(error, match=words):
            await engine.add_voice("bad", audio, rate)
    with pytest.raises(VoiceNameError):
        await engine.add_voice("../../etc/passwd", speech_like(3.0), SAMPLE_RATE)
    assert await engine.get_available_speakers() == [UNPROMPTED]


async def test_a_taken_name_needs_replace_and_a_removed_voice_is_gone(
    engine: TTSEngine, clip: np.ndarray
) -> None:
    await engine.add_voice("ref", clip, SAMPLE_RATE)
    with pytest.raises(VoiceNameError, match="replace=True"):
        await engine.add_voice("REF", clip, SAMPLE_RATE)
    await engine.add_voice("REF", clip, SAMPLE_RATE, replace=True)
    assert await engine.get_available_speakers() == ["REF", UNPROMPTED]
    await engine.remove_voice("ref")
    with pytest.raises(UnknownVoiceError):
        engine.resolve_voice("ref")
    with pytest.raises(VoiceError):
        await engine.add_voice(UNPROMPTED, clip, SAMPLE_RATE, replace=True)


async def test_a_voice_name_from_a_client_is_looked_up_never_opened(engine: TTSEngine) -> None:
    for name in ("../voices.json", "/etc/passwd", "voices.json", "ref.wav"):
        with pytest.raises(UnknownVoiceError):
            engine.resolve_voice(name)


async def test_the_voices_dir_is_listed_and_persisting_writes_only_there(
    tiny_checkpoint: Path, tmp_path: Path, clip: np.ndarray
) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    pcm = (speech_like(2.5, rate=16000, seed=2) * 32767).astype("<i2").tobytes()
    write_wav(voices / "carol.wav", pcm, 16000)  # another rate: resampled at load
    write_wav(voices / "quiet.wav", b"\0\0" * 48000, 24000)  # silent: skipped with a warning
    (voices / METADATA_FILE).write_text(
        json.dumps({"Carol": {"file": "carol.wav", "consent": "on file"}}), encoding="utf-8"
    )
    engine = TTSEngine(engine_config(tiny_checkpoint, voices_dir=str(voices)))
    await engine.initialize()
    try:
        assert await engine.get_available_speakers() == ["Carol", UNPROMPTED]
        before = sorted(p.name for p in tmp_path.rglob("*"))
        await engine.add_voice("dave", clip, SAMPLE_RATE)  # not persisted: nothing written
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
        await engine.add_voice("erin", clip, SAMPLE_RATE, persist=True, consent="signed")
        data = json.loads((voices / METADATA_FILE).read_text(encoding="utf-8"))
        assert data["erin"] == {"file": "erin.wav", "consent": "signed"}
    finally:
        await engine.cleanup()
    again = TTSEngine(engine_config(tiny_checkpoint, voices_dir=str(voices)))
    await again.initialize()
    try:
        assert await again.get_available_speakers() == ["Carol", "erin", UNPROMPTED]
        audio = await again.synthesize("Hi.", "erin", max_latents=1)
        assert audio.size == HOP
    finally:
        await again.cleanup()


async def test_persist_without_a_voices_dir_is_refused(engine: TTSEngine, clip: np.ndarray) -> None:
    with pytest.raises(VoiceError, match="voices_dir"):
        await engine.add_voice("x", clip, SAMPLE_RATE, persist=True)
    assert await engine.get_available_speakers() == [UNPROMPTED]


async def test_engines_without_voice_cloning_say_so() -> None:
    from pipecat_vibevoice.engine import TTSConfig
    from pipecat_vibevoice.engine.backends.base import AudioPiece, SpeechBackend

    class Tone(SpeechBackend):
        name = "tone"

        def load(self) -> None: ...

        def voices(self) -> list[str]:
            return ["tone"]

        def stream(self, request):
            yield AudioPiece(np.zeros(240, np.float32))

        def unload(self) -> None: ...

    engine = TTSEngine(TTSConfig(engine="piper"), backend_factory=lambda _: Tone())
    with pytest.raises(VoiceCloningUnsupportedError, match="vibevoice-1.5b"):
        await engine.add_voice("x", speech_like(3.0), SAMPLE_RATE)
    await engine.cleanup()


def test_a_checkpoint_that_is_not_vibevoice_1p5b_is_unavailable(tmp_path: Path) -> None:
    from pipecat_vibevoice.engine.backends.vibevoice_1p5b import VibeVoice15BBackend
    from pipecat_vibevoice.engine.errors import BackendUnavailable

    (tmp_path / "config.json").write_text('{"model_type": "vibevoice_streaming"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="not VibeVoice-1.5B"):
        VibeVoice15BBackend(engine_config(tmp_path))
    with pytest.raises(BackendUnavailable):
        VibeVoice15BBackend(engine_config(tmp_path / "missing"))
