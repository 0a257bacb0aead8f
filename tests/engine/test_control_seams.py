"""Speed and pitch changing between the sentences of one stream: no seams, no gaps.

The Pipecat service takes a settings change at its next engine request, one sentence at
a time, so a stream whose speed and pitch change is a run of engine requests with
different controls, played back to back. Each must start and end cleanly (its stages
flushed, nothing cut), hand out chunks with no gap or overlap in time, and keep the
length the controls promise; and within one request the chunk joins must not show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from audio_analysis import as_float, median_f0

from pipecat_vibevoice.engine import SpeechChunk, TTSConfig, TTSEngine

SENTENCES = [
    "Good morning, this is the harbor office.",
    "The ferry leaves at half past nine today.",
    "Please keep your ticket until the end.",
    "The last boat comes back at six tonight.",
]
#: (speed, pitch) for each sentence in turn: every kind of change at a join.
SETTINGS = [(1.0, 1.0), (1.5, 0.8), (0.75, 1.25), (2.0, 2.0)]
EDGE_S = 0.005


async def speak(engine: TTSEngine, text: str, seed: int, speed: float, pitch: float):
    return [c async for c in engine.stream_chunks(text, seed=seed, speed=speed, pitch=pitch)]


def check_timing(chunks: list[SpeechChunk], rate: int, chunk_samples: int) -> int:
    """Chunks follow each other with no gap or overlap; returns the sample count."""
    assert chunks[0].start_s == 0.0
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start_s == pytest.approx(before.end_s, abs=0.5 / rate)
    sizes = [len(c.pcm) // 2 for c in chunks]
    assert all(n == chunk_samples for n in sizes[:-1]) and 0 < sizes[-1] <= chunk_samples
    assert chunks[-1].end_s == pytest.approx(sum(sizes) / rate, abs=0.5 / rate)
    return sum(sizes)


@pytest.fixture(scope="module")
def spoken(piper_engine: TTSEngine) -> dict:
    """Each sentence with its changing controls, and at natural speed and pitch."""

    async def run() -> dict:
        changed = [
            await speak(piper_engine, text, i, *SETTINGS[i]) for i, text in enumerate(SENTENCES)
        ]
        plain = [await speak(piper_engine, text, i, 1.0, 1.0) for i, text in enumerate(SENTENCES)]
        speed_only = [
            await speak(piper_engine, text, i, SETTINGS[i][0], 1.0)
            for i, text in enumerate(SENTENCES)
        ]
        return {"changed": changed, "plain": plain, "speed_only": speed_only}

    return asyncio.run(run())


def test_each_request_hands_out_contiguous_chunks_of_the_promised_length(
    piper_engine: TTSEngine, spoken: dict
) -> None:
    config = piper_engine.config
    for i, (speed, _) in enumerate(SETTINGS):
        n = check_timing(spoken["changed"][i], config.sample_rate, config.chunk_samples)
        base = check_timing(spoken["plain"][i], config.sample_rate, config.chunk_samples)
        # Native up to 1.25x, then WSOLA: within 10 % of 1/speed (test_speed_pitch_quality).
        assert n / base == pytest.approx(1 / speed, rel=0.10)


def test_pitch_keeps_the_length_to_the_sample(spoken: dict) -> None:
    """Same seed, same speed: pitch alone must not add or drop a single sample."""
    for i in range(len(SETTINGS)):
        changed = sum(len(c.pcm) for c in spoken["changed"][i])
        assert changed == sum(len(c.pcm) for c in spoken["speed_only"][i])


def test_pitch_changes_between_sentences_as_asked(piper_engine: TTSEngine, spoken: dict) -> None:
    rate = piper_engine.config.sample_rate
    for i, (_, pitch) in enumerate(SETTINGS):
        if pitch == 1.0:
            continue
        # Against the same speed at pitch 1: the pitch stage alone, after any stretch.
        changed = as_float(b"".join(c.pcm for c in spoken["changed"][i]))
        same_speed = as_float(b"".join(c.pcm for c in spoken["speed_only"][i]))
        ratio = median_f0(changed, rate, fmin=40, fmax=500) / median_f0(same_speed, rate, fmin=40)
        assert ratio == pytest.approx(pitch, rel=0.10)


def joins(parts: list[np.ndarray]) -> Iterator[int]:
    at = 0
    for part in parts[:-1]:
        at += part.size
        yield at


def test_joins_between_sentences_have_no_click(piper_engine: TTSEngine, spoken: dict) -> None:
    """Every utterance fades in and out by itself, so the stream has no jump at a join.

    A stage that cut its tail (not flushed) or started mid-waveform would end or begin
    loud; the bound is the stream's own sample-to-sample steps in its speech.
    """
    rate = piper_engine.config.sample_rate
    edge = int(EDGE_S * rate)
    parts = [as_float(b"".join(c.pcm for c in chunks)) for chunks in spoken["changed"]]
    stream = np.concatenate(parts)
    steps = np.abs(np.diff(stream))
    typical = float(np.percentile(steps, 99))
    for part in parts:
        level = float(np.sqrt(np.mean(part**2)))
        assert np.sqrt(np.mean(part[:edge] ** 2)) < 0.1 * level
        assert np.sqrt(np.mean(part[-edge:] ** 2)) < 0.1 * level
    for at in joins(parts):
        assert steps[at - edge : at + edge].max() < typical


def test_chunk_joins_within_a_request_do_not_show(piper_engine: TTSEngine) -> None:
    """Streamed in 80 ms chunks or handed out whole, the samples are the same."""
    whole_engine = TTSEngine(TTSConfig(engine="piper", streaming=False))

    async def both() -> tuple[bytes, bytes]:
        text = " ".join(SENTENCES[:2])
        streamed = await speak(piper_engine, text, 5, 1.5, 0.8)
        await whole_engine.initialize()
        try:
            whole = await speak(whole_engine, text, 5, 1.5, 0.8)
        finally:
            await whole_engine.cleanup()
        assert len(whole) == 1
        return b"".join(c.pcm for c in streamed), whole[0].pcm

    streamed, whole = asyncio.run(both())
    assert streamed == whole
