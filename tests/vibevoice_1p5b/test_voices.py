"""Reference clips and the voices directory: the rules, without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipecat_vibevoice.engine.errors import (
    ClipTooLongError,
    ClipTooShortError,
    SampleRateError,
    SilentClipError,
    VoiceClipError,
    VoiceNameError,
)
from pipecat_vibevoice.engine.voices import (
    MAX_CLIP_S,
    METADATA_FILE,
    MIN_CLIP_S,
    VoiceDirectory,
    check_voice_name,
    prepare_clip,
)
from pipecat_vibevoice.wav import write_wav

from .conftest import speech_like

RATE = 24000


def test_a_good_clip_comes_back_mono_float32_at_the_target_rate() -> None:
    clip = speech_like(3.0, rate=48000)
    out = prepare_clip(clip, 48000, RATE)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - 3 * RATE) <= 2  # soxr's streaming resampler: whole length, +-rounding
    same = prepare_clip(speech_like(3.0), RATE, RATE)
    np.testing.assert_array_equal(same, speech_like(3.0))  # equal rates: untouched samples


def test_channels_are_averaged_and_int16_is_scaled() -> None:
    mono = speech_like(2.5)
    stereo = np.stack([mono, mono], axis=1)
    np.testing.assert_allclose(prepare_clip(stereo, RATE, RATE), mono, atol=1e-7)
    np.testing.assert_allclose(prepare_clip(stereo.T, RATE, RATE), mono, atol=1e-7)
    ints = np.round(mono * 32767).astype(np.int16)
    np.testing.assert_allclose(prepare_clip(ints, RATE, RATE), mono, atol=2 / 32768)


@pytest.mark.parametrize("seconds", [0.0, 0.5, MIN_CLIP_S - 0.01])
def test_a_clip_too_short_is_refused(seconds: float) -> None:
    with pytest.raises(ClipTooShortError, match="at least"):
        prepare_clip(speech_like(seconds) if seconds else np.zeros(0, np.float32), RATE, RATE)


def test_a_clip_too_long_is_refused() -> None:
    with pytest.raises(ClipTooLongError, match="at most"):
        prepare_clip(speech_like(MAX_CLIP_S + 0.5, rate=8000), 8000, RATE)


@pytest.mark.parametrize("level", [0.0, 1e-4])
def test_a_silent_clip_is_refused(level: float) -> None:
    clip = np.full(3 * RATE, level, np.float32)
    clip[100] = 0.5  # one click does not make speech
    with pytest.raises(SilentClipError, match="silent"):
        prepare_clip(clip, RATE, RATE)


@pytest.mark.parametrize("rate", [0, -24000, 4000, 1_000_000, 44100.5, True, "24000", None])
def test_a_rate_that_cannot_be_resampled_is_refused(rate: object) -> None:
    with pytest.raises(SampleRateError, match="sample_rate"):
        prepare_clip(speech_like(3.0), rate, RATE)


@pytest.mark.parametrize(
    "audio",
    [
        np.array(["a"] * 72000),
        np.zeros((10, 10, 10), np.float32),
        np.full(72000, np.nan, np.float32),
    ],
)
def test_what_is_not_audio_is_refused(audio: np.ndarray) -> None:
    with pytest.raises(VoiceClipError):
        prepare_clip(audio, RATE, RATE)


@pytest.mark.parametrize(
    "name", ["", " ", "../x", "a/b", "a b", "-a", ".hidden", "x" * 65, 3, None]
)
def test_bad_voice_names_are_refused(name: object) -> None:
    with pytest.raises(VoiceNameError):
        check_voice_name(name)


def _wav(path: Path, seconds: float = 2.5, rate: int = RATE) -> None:
    pcm = (np.clip(speech_like(seconds, rate), -1, 1) * 32767).astype("<i2").tobytes()
    write_wav(path, pcm, rate)


def test_the_directory_lists_entries_and_unlisted_wavs_and_skips_escapes(tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    _wav(voices / "a.wav")
    _wav(voices / "loose-one.wav")
    _wav(tmp_path / "outside.wav")
    (voices / METADATA_FILE).write_text(
        json.dumps(
            {
                "Alice": {"file": "a.wav", "description": "warm", "consent": "signed 2026-07-01"},
                "escape": {"file": "../outside.wav"},
                "absolute": {"file": str(tmp_path / "outside.wav")},
                "nested": {"file": "sub/a.wav"},
                "missing": {"file": "nope.wav"},
                "bad name!": {"file": "a.wav"},
            }
        ),
        encoding="utf-8",
    )
    entries = VoiceDirectory(voices).entries()
    assert [e.name for e in entries] == ["Alice", "loose-one"]
    alice = entries[0]
    assert alice.description == "warm" and alice.consent == "signed 2026-07-01"
    audio, rate = VoiceDirectory.read(alice)
    assert rate == RATE and audio.size == int(2.5 * RATE)


def test_save_writes_the_wav_and_the_entry_and_remove_deletes_them(tmp_path: Path) -> None:
    directory = VoiceDirectory(tmp_path / "new")
    clip = speech_like(2.5)
    directory.save("bob", clip, RATE, description="calm", consent="recorded with consent")
    data = json.loads((tmp_path / "new" / METADATA_FILE).read_text(encoding="utf-8"))
    assert data == {
        "bob": {"file": "bob.wav", "description": "calm", "consent": "recorded with consent"}
    }
    (entry,) = directory.entries()
    audio, rate = directory.read(entry)
    np.testing.assert_allclose(audio, clip, atol=1 / 32768 + 1e-6)
    assert directory.remove("BOB")
    assert directory.entries() == [] and not (tmp_path / "new" / "bob.wav").exists()
    assert not directory.remove("bob")
