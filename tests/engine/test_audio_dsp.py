"""Streaming DSP stages: exact chunking, seamless resampling, speed and pitch on tones and vowels."""

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
from pipecat_vibevoice.engine.pitch import PitchShifter

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


FORMANTS = (700.0, 1200.0, 2500.0)
FORMANT_BANDS = ((500.0, 950.0), (950.0, 1800.0), (1900.0, 3200.0))


def vowel(f0: float, seconds: float, formants=FORMANTS, sr: int = SR) -> np.ndarray:
    """A steady synthetic vowel: the harmonics of ``f0`` shaped by three resonances.

    Each harmonic gets the magnitude of three two-pole resonators (80 Hz bandwidth) at
    its frequency, as a glottal pulse train through a vocal tract would.
    """
    t = np.arange(int(seconds * sr)) / sr
    harmonics = np.arange(f0, sr / 2, f0)
    r = np.exp(-np.pi * 80 / sr)
    gain = np.ones_like(harmonics)
    for freq in formants:
        z = np.exp(-1j * 2 * np.pi * harmonics / sr)
        pole = r * np.exp(1j * 2 * np.pi * freq / sr)
        gain *= np.abs(1 / ((1 - pole * z) * (1 - np.conj(pole) * z)))
    out = (gain[:, None] * np.sin(2 * np.pi * harmonics[:, None] * t)).sum(axis=0)
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def envelope_peak(audio: np.ndarray, lo: float, hi: float, sr: int = SR) -> float:
    """Frequency of the strongest spectral-envelope peak in [lo, hi] Hz (cepstral smoothing)."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size))) + 1e-9
    cepstrum = np.fft.irfft(np.log(spectrum))
    keep = int(sr / 400)  # drop quefrencies of any period (F0 up to 400 Hz)
    cepstrum[keep:-keep] = 0
    smooth = np.fft.rfft(cepstrum).real
    freqs = np.fft.rfftfreq(audio.size, 1 / sr)
    band = (freqs >= lo) & (freqs <= hi)
    return float(freqs[band][np.argmax(smooth[band])])


@pytest.mark.parametrize("pitch", [0.5, 0.8, 1.25, 2.0])
def test_pitch_moves_f0_but_keeps_formants_and_length(pitch: float) -> None:
    """PSOLA: the pulse rate changes, each pulse's shape (the formants) does not.

    Resampling (what shipped before) moves every formant by the factor; here each must
    stay within 8 % (the smoothed envelope's resolution at F0 = 60-240 Hz).
    """
    audio = vowel(120.0, 1.5)
    out = run_in_pieces(SpeedPitchStage(SR, pitch=pitch), audio, 1000)
    assert out.size == audio.size
    assert median_f0(out, SR, fmin=50) == pytest.approx(120.0 * pitch, rel=0.05)
    middle = slice(SR // 4, SR + SR // 4)
    for (lo, hi), formant in zip(FORMANT_BANDS, FORMANTS, strict=True):
        assert envelope_peak(out[middle], lo, hi) == pytest.approx(formant, rel=0.08)


def test_pitch_shifter_output_does_not_depend_on_piece_sizes() -> None:
    """Every position is global, so any cut of the input gives the same samples."""
    audio = vowel(110.0, 1.0)
    one = run_in_pieces(PitchShifter(SR, 0.8), audio, audio.size)
    for piece in (64, 700, 4410):
        assert np.array_equal(run_in_pieces(PitchShifter(SR, 0.8), audio, piece), one)


def test_pitch_shifter_at_factor_one_reconstructs_the_input() -> None:
    """Complementary half-windows at unchanged marks sum to one: the identity, to rounding."""
    audio = vowel(130.0, 1.0)
    out = run_in_pieces(PitchShifter(SR, 1.0), audio, 1000)
    assert np.max(np.abs(out - audio)) < 1e-6


@pytest.mark.parametrize("speed", [1.4, 1.6, 2.0])
def test_fast_speed_cascade_is_exact_steady_and_keeps_f0(speed: float) -> None:
    """A speed-up beyond 1.25x is a cascade of short-frame WSOLA stages of <= 1.3x each.

    The cascade must still give 1/speed of the input to the sample, the same samples however
    the input is cut into pieces, and the vowel's F0.
    """
    stage = SpeedPitchStage(SR, speed=speed)
    assert len(stage._stretches) >= 2
    audio = vowel(110.0, 1.5)
    one = run_in_pieces(SpeedPitchStage(SR, speed=speed), audio, audio.size)
    # Each stage rounds its own length: at most one sample per stage from 1/speed.
    assert abs(one.size - audio.size / speed) <= len(stage._stretches)
    assert median_f0(one, SR, fmin=50) == pytest.approx(110.0, rel=0.03)
    for piece in (64, 1764):
        assert np.array_equal(run_in_pieces(SpeedPitchStage(SR, speed=speed), audio, piece), one)
