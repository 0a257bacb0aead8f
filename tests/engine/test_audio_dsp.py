"""Streaming DSP stages: exact chunking, seamless resampling, speed and pitch on tones."""

from __future__ import annotations

import numpy as np
import pytest
from audio_analysis import median_f0

from pipecat_vibevoice.engine.audio import (
    AudioPipeline,
    Rechunker,
    SpeedPitchStage,
    StreamResampler,
)

SR = 22050


def tone(freq: float, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def run_in_pieces(stage, audio: np.ndarray, piece: int) -> np.ndarray:
    out = [stage.process(audio[i : i + piece]) for i in range(0, len(audio), piece)]
    out.append(stage.process(np.zeros(0, np.float32), last=True))
    return np.concatenate(out)


def test_rechunker_emits_exact_chunks_and_a_short_tail() -> None:
    chunker = Rechunker(10)
    chunks = chunker.push(b"x" * 7) + chunker.push(b"y" * 18)
    assert [len(c) for c in chunks] == [10, 10]
    assert chunker.flush() == b"y" * 5


def test_streamed_resampling_equals_one_shot() -> None:
    audio = tone(440, 1.0)
    whole = StreamResampler(SR, 24000).process(audio, last=True)
    pieces = run_in_pieces(StreamResampler(SR, 24000), audio, 777)
    assert abs(len(pieces) - 24000) <= 2
    n = min(len(whole), len(pieces))
    # soxr keeps its filter state across pieces, so only float32 rounding of its FIR
    # (a few 1e-7 at |x| <= 1) separates the two; 1e-4 is 3 PCM16 steps.
    assert np.max(np.abs(whole[:n] - pieces[:n])) < 1e-4


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.5, 2.0])
def test_speed_changes_duration_not_pitch(speed: float) -> None:
    audio = tone(150, 2.0)
    out = run_in_pieces(SpeedPitchStage(SR, speed=speed), audio, 1764)
    assert len(out) / len(audio) == pytest.approx(1 / speed, rel=0.02)
    assert median_f0(out, SR) == pytest.approx(150, rel=0.05)


@pytest.mark.parametrize(
    ("speed", "pitch"), [(1.0, 0.5), (1.0, 1.5), (1.0, 2.0), (2.0, 0.5), (0.5, 2.0)]
)
def test_pitch_changes_f0_and_keeps_speed(speed: float, pitch: float) -> None:
    audio = tone(150, 2.0)
    out = run_in_pieces(SpeedPitchStage(SR, speed=speed, pitch=pitch), audio, 1764)
    assert len(out) / len(audio) == pytest.approx(1 / speed, rel=0.03)
    assert median_f0(out, SR) == pytest.approx(150 * pitch, rel=0.05)


def test_pitch_shift_has_no_seams_between_pieces() -> None:
    """Small pieces must give the same signal as big ones: no clicks at chunk edges."""
    audio = tone(200, 1.5)
    small = run_in_pieces(SpeedPitchStage(SR, pitch=1.3), audio, 256)
    big = run_in_pieces(SpeedPitchStage(SR, pitch=1.3), audio, 8192)
    n = min(len(small), len(big))
    assert np.max(np.abs(small[:n] - big[:n])) < 0.02
    # and no sample-to-sample jump larger than the tone itself can produce
    max_step = 0.5 * 2 * np.pi * 200 * 1.3 / SR
    assert np.max(np.abs(np.diff(small[1000:-1000]))) < 2.5 * max_step


def test_audio_pipeline_chunk_sizes() -> None:
    pipeline = AudioPipeline(SR, 24000, chunk_samples=1920)
    chunks = []
    for piece in np.array_split(tone(300, 1.0), 7):
        chunks += pipeline.push(piece)
    chunks += pipeline.finish()
    assert all(len(c) == 3840 for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 3840
    assert abs(sum(len(c) for c in chunks) // 2 - 24000) <= 2
