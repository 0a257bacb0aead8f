"""VibeVoice word timestamps (window-level) on the tiny fixture model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch

from pipecat_vibevoice.engine import GrowingText, TTSConfig, TTSEngine
from pipecat_vibevoice.engine.backends.base import SynthesisRequest
from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
    VibeVoiceRealtimeModel,
)

TEXT = "Hello there, my friend. Streaming speech starts as soon as the first window is ready."
LATENT = 3200  # samples per latent at 24 kHz
WINDOW_S = 6 * LATENT / 24000  # one speech window: 6 latents, 0.8 s
OPTIONS = {"seed": 4, "inference_steps": 2}


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[TTSEngine]:
    """A VibeVoice engine on the tiny model, its EOS head silenced: every window is whole."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            VibeVoiceRealtimeModel,
            "eos_logit",
            lambda self, hidden: torch.full((hidden.shape[0],), -4.0),
        )
        config = TTSConfig(engine="vibevoice", model_path=str(model_dir), device="cpu")
        engine = TTSEngine(config)
        asyncio.run(engine.initialize())
        yield engine
        asyncio.run(engine.cleanup())


def test_every_word_starts_in_the_window_that_reads_it(engine: TTSEngine) -> None:
    backend = engine.backend
    request = SynthesisRequest(text=TEXT, voice=backend.voices()[0], options=dict(OPTIONS))
    pieces = list(backend.stream(request))
    marks = [(i, pos, offset) for i, p in enumerate(pieces) for pos, offset in p.words]
    assert [TEXT[pos:].split()[0] for _, pos, _ in marks] == TEXT.split()
    for latent, pos, offset in marks:
        start, end = pieces[latent].text_span
        assert start <= pos < end, "a word timed in a window that does not read it"
        assert 0 <= offset < pieces[latent].audio.size
    # In order, spread over the window: at most one word per latent at the same place.
    at = [latent * LATENT + offset for latent, _, offset in marks]
    assert at == sorted(at) and len(set(at)) == len(at)
    # A window's words start in its own 6 latents, the first at the window's start.
    windows: dict[tuple[int, int], list[int]] = {}
    for latent, piece in enumerate(pieces):
        windows.setdefault(piece.text_span, []).append(latent)
    for latent, _, _ in marks:
        own = windows[pieces[latent].text_span]
        assert own[0] <= latent <= own[-1] and len(own) == 6
    timed = {windows[pieces[latent].text_span][0] for latent, _, _ in marks}
    assert timed <= {latent for latent, _, offset in marks if offset == 0}


async def test_chunk_word_times_lie_in_their_windows(engine: TTSEngine) -> None:
    backend = engine.backend
    request = SynthesisRequest(text=TEXT, voice=backend.voices()[0], options=dict(OPTIONS))
    window_of = {
        pos: latent // 6 for latent, p in enumerate(backend.stream(request)) for pos, _ in p.words
    }
    chunks = [c async for c in engine.stream_chunks(TEXT, **OPTIONS)]
    words = [w for c in chunks for w in c.words]
    assert [w for w, _ in words] == TEXT.split()
    for (word, t), pos in zip(words, sorted(window_of), strict=True):
        window = window_of[pos]
        assert window * WINDOW_S - 1e-9 <= t < (window + 1) * WINDOW_S, (word, t, window)
    for c in chunks:
        assert all(c.start_s <= t <= c.end_s for _, t in c.words)


async def test_streamed_text_is_timed_word_by_word(engine: TTSEngine) -> None:
    text = GrowingText()

    async def produce() -> None:
        for i, word in enumerate(TEXT.split(" ")):
            text.append(word if i == 0 else " " + word)
            await asyncio.sleep(0.01)
        text.close()

    async def words() -> AsyncIterator[tuple[str, float]]:
        async for chunk in engine.stream_chunks(text, **OPTIONS):
            for word in chunk.words:
                yield word

    producer = asyncio.create_task(produce())
    got = [w async for w in words()]
    await producer
    assert [w for w, _ in got] == TEXT.split()
    times = [t for _, t in got]
    assert times == sorted(times)
    # Same text, same windows: the same times as the whole string gets.
    whole = [t for c in [c async for c in engine.stream_chunks(TEXT, **OPTIONS)] for _, t in c.words]
    assert times == pytest.approx(whole)


async def test_words_the_model_did_not_reach_go_with_the_last_chunk(engine: TTSEngine) -> None:
    # Two latents: the first window's second word was spread to its fourth latent.
    chunks = [c async for c in engine.stream_chunks(TEXT, max_latents=2, **OPTIONS)]
    words = [w for c in chunks for w in c.words]
    first_window = [w for w, _ in words]
    assert len(first_window) >= 2 and TEXT.startswith(" ".join(first_window))
    assert chunks[-1].end_s == pytest.approx(2 * LATENT / 24000)
    late = [t for _, t in chunks[-1].words]
    assert late and all(t <= chunks[-1].end_s for t in late)
