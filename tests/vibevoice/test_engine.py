"""The VibeVoice backend through the public ``TTSEngine`` API, on the tiny fixture model."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipecat_vibevoice.engine import BackendUnavailable, TTSConfig, TTSEngine
from pipecat_vibevoice.engine.backends.vibevoice import VibeVoiceBackend
from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
    VibeVoiceRealtimeModel,
)

from .conftest import link_model_dir

TEXT = "Hello there, my friend. Streaming speech starts as soon as the first window is ready."
CHUNK_BYTES = 24000 * 80 // 1000 * 2


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[TTSEngine]:
    """A VibeVoice engine on the tiny model, EOS head silenced for long deterministic runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            VibeVoiceRealtimeModel,
            "eos_logit",
            lambda self, hidden: torch.full((hidden.shape[0],), -4.0),
        )
        # float64: concurrent streams share batched steps, which round differently from a
        # batch of one; in float64 that difference stays far below one PCM16 step.
        config = TTSConfig(
            engine="vibevoice", model_path=str(model_dir), device="cpu", dtype="float64"
        )
        engine = TTSEngine(config)
        asyncio.run(engine.initialize())
        yield engine
        asyncio.run(engine.cleanup())


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def words(text: str, delay: float = 0.0) -> AsyncIterator[str]:
    parts = text.split(" ")
    for i, word in enumerate(parts):
        yield word if i == len(parts) - 1 else word + " "
        await asyncio.sleep(delay)


async def test_health_and_voices(engine: TTSEngine, model_dir: Path) -> None:
    health = await engine.health_check()
    assert health["status"] == "ok" and health["engine"] == "vibevoice"
    assert health["device"] == "cpu" and health["dtype"] == "float64"  # as configured
    assert health["model_path"] == str(model_dir)
    assert await engine.get_available_speakers() == ["voice_preset"]
    assert engine.resolve_voice(0) == "voice_preset"


async def test_stream_is_fixed_size_chunks_of_one_latent_each(engine: TTSEngine) -> None:
    chunks = [
        c
        async for c in engine.synthesize_streaming(TEXT, seed=1, max_latents=10, inference_steps=2)
    ]
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1])
    assert sum(map(len, chunks)) == 10 * 3200 * 2  # 10 latents of 3200 samples, 24 kHz out
    audio = np.frombuffer(b"".join(chunks), "<i2")
    assert np.abs(audio).max() > 100  # not silence


async def test_per_call_cfg_scale_and_inference_steps(engine: TTSEngine) -> None:
    base = dict(seed=5, max_latents=4)
    a = await collect(engine.synthesize_streaming(TEXT, **base))
    b = await collect(engine.synthesize_streaming(TEXT, **base))
    assert a == b  # same seed, same options: identical
    assert await collect(engine.synthesize_streaming(TEXT, cfg_scale=3.0, **base)) != a
    assert await collect(engine.synthesize_streaming(TEXT, inference_steps=2, **base)) != a
    with pytest.raises(ValueError, match="cfg_scale"):
        await collect(engine.synthesize_streaming(TEXT, cfg_scale=0.0))
    with pytest.raises(ValueError, match="inference_steps"):
        await collect(engine.synthesize_streaming(TEXT, inference_steps=0))


async def test_phrase_timestamps_follow_the_text(engine: TTSEngine) -> None:
    chunks = [
        c async for c in engine.stream_chunks(TEXT, seed=2, max_latents=24, inference_steps=2)
    ]
    assert chunks[0].start_s == 0.0
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start_s == pytest.approx(before.end_s)
        assert after.text_span[0] >= before.text_span[0]  # spans move forward only
    assert chunks[-1].end_s == pytest.approx(24 * 3200 / 24000)
    for chunk in chunks:
        s, e = chunk.text_span
        assert chunk.text == TEXT[s:e]
    assert chunks[0].text_span[0] == 0 and chunks[0].text  # the first window's words
    # Each 6-latent speech window covers the 5 tokens read just before it: the spans of
    # the first three windows are distinct, consecutive pieces of the text.
    per_window = [chunks[int(w * 6 * 3200 / 1920)].text_span for w in range(3)]
    assert per_window[0][1] <= per_window[1][0] + 1 and per_window[1][1] <= per_window[2][0] + 1
    assert per_window[2][1] > per_window[0][1]


async def test_streaming_text_input_equals_whole_text(engine: TTSEngine) -> None:
    options = dict(seed=9, max_latents=20, inference_steps=2)
    whole = await collect(engine.synthesize_streaming(TEXT, **options))
    streamed = await collect(engine.synthesize_streaming(words(TEXT), **options))
    assert streamed == whole


async def test_streaming_text_input_starts_speaking_before_the_text_ends(engine: TTSEngine) -> None:
    state = {"done_at": None}

    async def slow_words() -> AsyncIterator[str]:
        async for word in words(TEXT, delay=0.05):
            yield word
        state["done_at"] = time.perf_counter()

    first_at = None
    chunks = engine.stream_chunks(slow_words(), seed=3, max_latents=30, inference_steps=2)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if first_at is None:
                first_at = time.perf_counter()
                first_text = chunk.text
    assert state["done_at"] is not None and first_at < state["done_at"] - 0.3
    assert TEXT.startswith(first_text)


async def test_stop_within_one_latent_when_the_consumer_leaves(
    engine: TTSEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = {"n": 0}
    original = VibeVoiceRealtimeModel.decode

    def counting(self, *args, **kwargs):
        decodes["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VibeVoiceRealtimeModel, "decode", counting)
    stream = engine.synthesize_streaming(TEXT, seed=4, inference_steps=2)
    first = await anext(stream)  # one latent (3200 samples) covers the first 80 ms chunk
    assert len(first) == CHUNK_BYTES
    await stream.aclose()
    await asyncio.sleep(0.3)
    after_close = decodes["n"]
    await asyncio.sleep(0.3)
    assert decodes["n"] == after_close <= 2  # at most the latent already under way


async def test_two_streams_at_once_match_their_solo_runs(engine: TTSEngine) -> None:
    solo = [
        await collect(engine.synthesize_streaming(TEXT, seed=s, max_latents=6, inference_steps=2))
        for s in (11, 12)
    ]
    together = await asyncio.gather(
        *(
            collect(engine.synthesize_streaming(TEXT, seed=s, max_latents=6, inference_steps=2))
            for s in (11, 12)
        )
    )
    # Concurrent streams share batched model steps (max_batch defaults to 8); in float64
    # they agree with a batch of one to ~1e-12, i.e. to the same PCM16 step or, right at
    # a half step, the next one.
    for got, want in zip(together, solo, strict=True):
        assert len(got) == len(want)
        diff = np.abs(np.frombuffer(got, "<i2").astype(int) - np.frombuffer(want, "<i2"))
        assert diff.max() <= 1


async def test_empty_text_stream_is_an_error(engine: TTSEngine) -> None:
    from pipecat_vibevoice.engine import EmptyTextError

    async def blank() -> AsyncIterator[str]:
        yield "   "

    with pytest.raises(EmptyTextError):
        await collect(engine.synthesize_streaming(blank()))


# -- availability -------------------------------------------------------------------------


def test_missing_tokenizer_names_the_file(tmp_path: Path) -> None:
    bare = link_model_dir(tmp_path / "model", tokenizer=None)
    backend = VibeVoiceBackend(TTSConfig(engine="vibevoice", model_path=str(bare), device="cpu"))
    with pytest.raises(BackendUnavailable, match=r"'tokenizer\.json' is missing"):
        backend.load()


def test_missing_voices_is_unavailable(tmp_path: Path, tokenizer_file: Path) -> None:
    bare = link_model_dir(tmp_path / "model", tokenizer_file, with_preset=False)
    backend = VibeVoiceBackend(TTSConfig(engine="vibevoice", model_path=str(bare), device="cpu"))
    with pytest.raises(BackendUnavailable, match="no VibeVoice voice presets"):
        backend.load()


def test_voices_dir_adds_presets(tmp_path: Path, tokenizer_file: Path, fixture_dir: Path) -> None:
    bare = link_model_dir(tmp_path / "model", tokenizer_file, with_preset=False)
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "en-Carter_man.pt").symlink_to(fixture_dir / "voice_preset.pt")
    (voices / "de-Anna_woman.pt").symlink_to(fixture_dir / "voice_preset.pt")
    config = TTSConfig(engine="vibevoice", model_path=str(bare), voices_dir=str(voices))
    backend = VibeVoiceBackend(config)
    backend.load()
    assert backend.voices() == ["en-Carter_man", "de-Anna_woman"]  # official default first
    backend.unload()


async def test_auto_falls_back_to_piper_quickly_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable):
        VibeVoiceBackend(TTSConfig(cache_dir=str(tmp_path)))  # default hub id, empty cache
    assert time.perf_counter() - started < 2.0
    engine = TTSEngine(TTSConfig(engine="auto", model_path=str(tmp_path / "absent")))
    try:
        await engine.initialize()
        health = await engine.health_check()
        assert health["engine"] == "piper" and health["status"] == "degraded"
        assert "vibevoice" in health["fallback_reason"]
        # Piper gets streamed text sentence by sentence, with sentence spans.
        chunks = [c async for c in engine.stream_chunks(words("One sentence here. And two."))]
        assert chunks[0].text == "One sentence here." and chunks[-1].text == "And two."
    finally:
        await engine.cleanup()


async def test_cleanup_frees_the_model(model_dir: Path) -> None:
    engine = TTSEngine(TTSConfig(engine="vibevoice", model_path=str(model_dir), device="cpu"))
    await engine.initialize()
    backend = engine.backend
    assert backend.model is not None
    assert (await engine.health_check())["dtype"] == "float32"  # dtype=auto on a CPU
    await engine.cleanup()
    assert backend._model is None and not engine.is_initialized
