"""Streaming pitch shift that keeps the voice's formants: pitch-synchronous overlap-add.

Resampling raises the pitch and every formant with it (a smaller, then a cartoon
voice); time-stretching first and resampling after adds WSOLA's phasing on top. This
stage changes only the rate at which the glottal pulses repeat, which is what pitch
is, and keeps each pulse's shape, which carries the formants (TD-PSOLA: Moulines and
Charpentier, 1990).

How one piece of audio goes through:

1. **Pitch marks.** From the last mark, the next voiced one is one period on: the lag
   (60-400 Hz) at which the waveform around the mark best matches itself (normalised
   cross-correlation; the shortest lag that scores near the best, which keeps octave
   errors out). Marks chained that way keep the same phase in every period; the first
   mark of a voiced stretch is put on its strongest sample, so the windows centre on the
   pulses. Where nothing repeats (unvoiced sounds, silence) marks are a fixed 6 ms apart.
2. **Overlap-add.** Output marks are spaced by the analysis period divided by the
   factor in voiced speech (and unchanged elsewhere); each takes the analysis mark
   nearest to it in time and adds that mark's two-period Hann-windowed segment there.
   Duration is kept exactly, so text spans and word times need no remapping.

At a factor of 1 the windows of consecutive marks sum to one and the signal comes out
unchanged. The stage holds back what later marks could still add to, plus what the mark
search looks ahead: 70-85 ms of audio (at most :attr:`PitchShifter.delay_samples`).
That is a hold on the stream, not on the first chunk: Piper's first decoder window
(279 ms) still yields two 80 ms chunks; the first comes 5-10 ms later (the stage's
compute, ~16 ms per second of audio on this box). Measured against the alternatives
(Praat's PSOLA, PSOLA on the LPC residual, WORLD, WSOLA + resampling) in the README.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: The F0 range searched (Hz): deep male voices to high female ones.
F0_MIN = 60.0
F0_MAX = 400.0
#: A lag whose normalised correlation reaches this is voiced speech.
VOICED_CORRELATION = 0.6
#: Among the lags, the shortest that scores this share of the best wins (no octave-down).
OCTAVE_GUARD = 0.95
#: Below this RMS (about -54 dBFS) a mark is silence, whatever it correlates.
SILENCE_RMS = 2e-3
#: Above this factor the windows shrink with it (DNSMOS OVRL at 2.0: 2.80 with two-period
#: windows, 2.94 with one period; at 1.25 two periods score best).
NARROW_ABOVE = 1.25
#: Spacing of the marks where there is no period (s).
UNVOICED_STEP_S = 0.006


class PitchShifter:
    """Shift the pitch of a mono float32 stream by ``factor``, duration and formants kept.

    Feed pieces with :meth:`process`; ``last=True`` flushes the end. The output is the
    same whatever the piece sizes (all positions are global sample indices), and its
    length is exactly the input's.
    """

    def __init__(self, sample_rate: int, factor: float) -> None:
        if not 0.25 <= factor <= 4.0:
            raise ValueError(f"pitch factor {factor} outside 0.25..4")
        self.sample_rate = sample_rate
        self.factor = factor
        self._lag_min = int(sample_rate / F0_MAX)
        self._lag_max = int(math.ceil(sample_rate / F0_MIN))
        self._half = self._lag_max  # correlation window: two longest periods
        self._unvoiced = max(1, round(UNVOICED_STEP_S * sample_rate))
        # No window reaches further than this from its mark.
        self._reach = self._lag_max
        # Input positions are counted from a run of zeros before the stream, so the
        # first marks have a full left window; the output drops it again.
        self._pad = self._reach + self._half
        self._x = np.zeros(self._pad, np.float64)
        self._x0 = 0  # global index of self._x[0]
        self._n = self._pad  # input samples so far (pad included)
        self._received = 0
        self._marks: list[int] = [self._pad]
        self._voiced: list[bool] = [False]
        # Raising far, two-period windows overlap several times over and smear: narrower.
        self._narrow = min(1.0, NARROW_ABOVE / factor)
        self._k = 0  # index into marks of the first mark the synthesis may still use
        self._next_out = float(self._pad)  # next output mark
        self._y = np.zeros(0, np.float64)
        self._y0 = 0  # global index of self._y[0]
        self._done = 0  # output samples final and handed out (global, pad included)

    @property
    def delay_samples(self) -> int:
        """Input held back before output is final: window reach plus mark look-ahead."""
        return 3 * self._reach + self._lag_max + self._half

    # -- public ---------------------------------------------------------------------

    def process(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        """Shift one piece; return the output now final (everything when ``last``)."""
        audio = np.asarray(audio, dtype=np.float64).reshape(-1)
        self._received += audio.size
        if last:
            # Silence after the end lets every mark near it be found and windowed.
            audio = np.concatenate([audio, np.zeros(self.delay_samples + self._reach)])
        if audio.size:
            self._x = np.concatenate([self._x, audio])
            self._n += audio.size
        self._find_marks()
        self._overlap_add()
        final = math.floor(self._next_out) - self._reach
        if last:
            final = self._pad + self._received
        out = self._take(min(final, self._pad + self._received))
        self._trim()
        return out

    # -- pitch marks ----------------------------------------------------------------

    def _find_marks(self) -> None:
        """Extend the marks as far as the input allows."""
        need = self._lag_max + self._half + 1
        while self._marks[-1] + need <= self._n:
            mark, was_voiced = self._marks[-1], self._voiced[-1]
            lag = self._period_at(mark, self._period_before() if was_voiced else None)
            if lag is None:
                self._marks.append(mark + self._unvoiced)
                self._voiced.append(False)
            elif not was_voiced:
                # Start of a voiced stretch: put the mark on the period's strongest sample.
                seg = self._slice(mark, mark + lag)
                self._marks.append(mark + 1 + int(np.argmax(np.abs(seg[1:]))))
                self._voiced.append(True)
            else:
                self._marks.append(mark + lag)
                self._voiced.append(True)

    def _period_before(self) -> int | None:
        if len(self._marks) >= 2 and self._voiced[-2]:
            return self._marks[-1] - self._marks[-2]
        return None

    def _period_at(self, mark: int, previous: int | None) -> int | None:
        """The period (samples) of the waveform around ``mark``, or None if unvoiced."""
        h, lo, hi = self._half, self._lag_min, self._lag_max
        ref = self._slice(mark - h, mark + h)
        energy = float(ref @ ref)
        if energy < (SILENCE_RMS**2) * ref.size:
            return None
        seg = self._slice(mark - h + lo, mark + h + hi)
        windows = sliding_window_view(seg, ref.size)  # one row per lag lo..hi
        dots = windows @ ref
        squares = np.concatenate([[0.0], np.cumsum(seg * seg)])
        energies = squares[ref.size :] - squares[: -ref.size]
        score = dots / np.sqrt(energy * np.maximum(energies, 1e-12))
        best = float(score.max())
        if best < VOICED_CORRELATION:
            return None
        inner = score[1:-1]
        peaks = np.flatnonzero((inner >= score[:-2]) & (inner >= score[2:])) + 1
        peaks = peaks[score[peaks] >= OCTAVE_GUARD * best]
        if peaks.size == 0:
            return lo + int(np.argmax(score))
        lags = peaks + lo
        if previous is not None:
            # Continuity first: a candidate close to the last period wins if it is good.
            near = lags[(lags >= 0.8 * previous) & (lags <= 1.25 * previous)]
            if near.size:
                return int(near[np.argmax(score[near - lo])])
        return int(lags[0])

    # -- synthesis ------------------------------------------------------------------

    def _overlap_add(self) -> None:
        """Place every output mark whose analysis marks are all known."""
        marks = self._marks
        while True:
            t = self._next_out
            # Nearest analysis mark to t; the mark after it must exist (its right window).
            k = self._k
            while k + 1 < len(marks) and marks[k + 1] <= t:
                k += 1
            if k + 2 >= len(marks):
                break
            if t - marks[k] > marks[k + 1] - t:
                k += 1
            self._k = max(0, k - 1)
            centre = marks[k]
            left = min(centre - marks[k - 1], self._reach) if k > 0 else self._unvoiced
            right = min(marks[k + 1] - centre, self._reach)
            if self._narrow < 1.0 and self._voiced[k]:
                left, span = max(1, round(self._narrow * left)), max(1, round(self._narrow * right))
            else:
                span = right
            segment = self._slice(centre - left, centre + span) * _window(left, span)
            self._add(round(t) - left, segment)
            step = right / self.factor if self._voiced[k] and self._voiced[k + 1] else right
            self._next_out = t + max(1.0, step)

    # -- buffers --------------------------------------------------------------------

    def _slice(self, start: int, end: int) -> np.ndarray:
        return self._x[start - self._x0 : end - self._x0]

    def _add(self, start: int, segment: np.ndarray) -> None:
        end = start + segment.size
        if end - self._y0 > self._y.size:
            self._y = np.concatenate([self._y, np.zeros(end - self._y0 - self._y.size)])
        self._y[start - self._y0 : end - self._y0] += segment

    def _take(self, final: int) -> np.ndarray:
        """Output samples up to global index ``final``, minus the leading pad."""
        start = max(self._done, self._pad)
        if final <= start:
            return np.zeros(0, np.float32)
        if final - self._y0 > self._y.size:
            self._y = np.concatenate([self._y, np.zeros(final - self._y0 - self._y.size)])
        out = self._y[start - self._y0 : final - self._y0].astype(np.float32)
        self._done = final
        return out

    def _trim(self) -> None:
        """Forget input, marks and output nothing can reach any more."""
        keep_mark = max(0, self._k - 2)
        if keep_mark:
            del self._marks[:keep_mark]
            del self._voiced[:keep_mark]
            self._k -= keep_mark
        cut = self._marks[0] - self._reach - self._x0
        if cut > 0:
            self._x = self._x[cut:]
            self._x0 += cut
        cut_y = self._done - self._y0
        if cut_y > 0:
            self._y = self._y[cut_y:]
            self._y0 += cut_y


def _window(left: int, right: int) -> np.ndarray:
    """Rising Hann half over ``left`` samples, falling over ``right``: complementary halves.

    The falling half of one mark and the rising half of the next cover the same period
    and sum to one, so unchanged marks reconstruct the signal.
    """
    rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(left) / left)
    fall = 0.5 + 0.5 * np.cos(np.pi * np.arange(right) / right)
    return np.concatenate([rise, fall])
