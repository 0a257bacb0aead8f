"""Measurements on synthesized audio used by several tests (not part of the product)."""

from __future__ import annotations

import numpy as np


def as_float(pcm: bytes | np.ndarray) -> np.ndarray:
    """PCM16 bytes or int16 array to float32 in [-1, 1)."""
    ints = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes | bytearray) else pcm
    return ints.astype(np.float32) / 32768.0


def median_f0(
    audio: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 400.0
) -> float:
    """Median fundamental frequency over voiced 40 ms frames (normalised autocorrelation).

    Crude but adequate to compare the same utterance at two pitches: the ratio of the
    medians tracks the pitch factor because the same frames are voiced in both.
    """
    frame = int(0.04 * sample_rate)
    hop = frame // 2
    lag_min = int(sample_rate / fmax)
    lag_max = int(sample_rate / fmin)
    energy_floor = 0.1 * np.sqrt(np.mean(audio**2))
    f0s = []
    for start in range(0, len(audio) - frame - lag_max, hop):
        seg = audio[start : start + frame + lag_max]
        head = seg[:frame]
        if np.sqrt(np.mean(head**2)) < energy_floor:
            continue
        corr = np.array(
            [
                np.dot(head, seg[lag : lag + frame])
                / (np.linalg.norm(head) * np.linalg.norm(seg[lag : lag + frame]) + 1e-9)
                for lag in range(lag_min, lag_max)
            ]
        )
        peak = float(corr.max())
        if peak < 0.75:
            continue
        # The first local maximum close to the best one: avoids octave-down errors,
        # where a period multiple correlates as well as the period itself.
        for i in range(1, len(corr) - 1):
            if corr[i] >= 0.9 * peak and corr[i] >= corr[i - 1] and corr[i] >= corr[i + 1]:
                f0s.append(sample_rate / (lag_min + i))
                break
    if len(f0s) < 5:
        raise AssertionError(f"too few voiced frames to measure f0 ({len(f0s)})")
    return float(np.median(f0s))


def voiced_duration(audio: np.ndarray, sample_rate: int) -> float:
    """Duration in seconds between the first and last frame above -40 dB of the peak."""
    frame = int(0.01 * sample_rate)
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.nonzero(rms > rms.max() * 0.01)[0]
    return float((loud[-1] - loud[0] + 1) * frame / sample_rate) if loud.size else 0.0
