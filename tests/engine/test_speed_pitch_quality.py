"""Piper's speed: the duration predictor's ``length_scale`` (calibrated) up to 1.25x, WSOLA beyond."""

from __future__ import annotations

import time

import pytest

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.engine.backends.piper import (
    FRAME_RATIOS,
    LENGTH_SCALES,
    PiperBackend,
    length_scale_for,
)
from pipecat_vibevoice.engine.controls import NATIVE_SPEED_MAX, SPEED, split_speed

TEXT = (
    "Thanks for calling the harbor office. The ferry leaves at half past nine, "
    "and the last boat comes back before the evening tide."
)


async def speak(engine: TTSEngine, **kwargs):
    return [chunk async for chunk in engine.stream_chunks(TEXT, seed=11, **kwargs)]


def test_piper_applies_speed_natively() -> None:
    assert PiperBackend.native_speed is True


@pytest.mark.parametrize("speed", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
def test_speed_is_split_between_model_and_stretch(speed: float) -> None:
    model, stretch = split_speed(speed, native=True)
    assert model * stretch == pytest.approx(speed)
    assert model == min(speed, NATIVE_SPEED_MAX)  # slower speeds all native
    assert split_speed(speed, native=False) == (1.0, speed)
    assert SPEED.low <= model <= SPEED.high


def test_calibration_inverts_the_measured_curve() -> None:
    assert length_scale_for(1.0) == 1.0
    for scale, ratio in zip(LENGTH_SCALES, FRAME_RATIOS, strict=True):
        assert length_scale_for(1 / ratio) == pytest.approx(scale, abs=1e-6)
    scales = [length_scale_for(s / 4) for s in range(2, 9)]
    assert scales == sorted(scales, reverse=True)  # faster speech, shorter scale


@pytest.mark.parametrize("speed", [0.5, 0.75, 1.5, 2.0])
async def test_duration_is_inverse_speed_and_words_stay_inside(
    piper_engine: TTSEngine, speed: float
) -> None:
    base = await speak(piper_engine)
    fast = await speak(piper_engine, speed=speed)
    base_s, fast_s = base[-1].end_s, fast[-1].end_s
    assert fast_s / base_s == pytest.approx(1 / speed, rel=0.10)
    words = [(w, t) for chunk in fast for w, t in chunk.words]
    assert [w for w, _ in words] == TEXT.split()
    times = [t for _, t in words]
    assert times == sorted(times)
    assert 0 <= times[0] and times[-1] < fast_s
    # each word keeps its place in the sentence: times scale with the duration
    ref = [t for chunk in base for _, t in chunk.words]
    assert times[-1] / fast_s == pytest.approx(ref[-1] / base_s, abs=0.08)


async def test_first_chunk_does_not_wait_for_a_different_speed(piper_engine: TTSEngine) -> None:
    async def first_chunk_s(**kwargs) -> float:
        started = time.perf_counter()
        async for _ in piper_engine.stream_chunks(TEXT, **kwargs):
            return time.perf_counter() - started
        return float("inf")

    default = min([await first_chunk_s() for _ in range(3)])
    slow = min([await first_chunk_s(speed=0.75) for _ in range(3)])
    fast = min([await first_chunk_s(speed=1.5) for _ in range(3)])
    # one front-half run either way: no extra pass, no stretch stage look-ahead
    assert slow < 2.0 * default + 0.05
    assert fast < 2.0 * default + 0.05
