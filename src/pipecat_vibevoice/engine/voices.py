"""Voices from reference audio: the clip rules, the voices directory, the backend's side.

Three jobs, one rule each:

* :func:`prepare_clip` — what a reference clip must be (mono-able numbers, a rate soxr
  can resample from, 2-60 s, not silent) and its conversion to the backend's rate. Every
  refusal is a :class:`~.errors.VoiceClipError` subclass that says what was wrong.
* :class:`VoiceDirectory` — a folder of WAV files with a small ``voices.json``::

      {"alice": {"file": "alice.wav", "description": "warm, slow",
                 "consent": "written consent from Alice, 2026-07-01"}}

  Entries name files *inside* the folder (a bare file name; anything with a separator or
  outside the folder is skipped with a warning). A WAV that no entry names is a voice
  named by its stem. The folder is read at load time and written only when a caller asks
  :meth:`~pipecat_vibevoice.engine.TTSEngine.add_voice` to ``persist`` a voice.
* :class:`ClonesVoices` — what a backend provides to take voices from clips.

Voice names are checked by :func:`check_voice_name`. A name that arrives from a client
(the TTS socket, a Pipecat setting) is only ever looked up among the loaded voices; no
path is built from it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from loguru import logger

from ..wav import write_wav
from .audio import StreamResampler, float_to_pcm16
from .errors import (
    ClipTooLongError,
    ClipTooShortError,
    SampleRateError,
    SilentClipError,
    VoiceClipError,
    VoiceError,
    VoiceNameError,
)

__all__ = [
    "MAX_CLIP_S",
    "METADATA_FILE",
    "MIN_CLIP_S",
    "ClonesVoices",
    "VoiceDirectory",
    "VoiceEntry",
    "check_voice_name",
    "prepare_clip",
]

#: Shortest clip: under two seconds the encoder gives fewer than 15 latents of voice.
MIN_CLIP_S = 2.0
#: Longest clip: every utterance's prompt carries the whole clip (7.5 tokens a second),
#: so a longer one costs prefill time on every sentence for little gain.
MAX_CLIP_S = 60.0
#: Rates soxr resamples from (telephone audio up to studio rates).
MIN_RATE, MAX_RATE = 8000, 192000
#: A 20 ms frame is sound when its RMS reaches -50 dBFS; a clip needs half a second of
#: such frames (a click or a hum at -60 dB is not a voice).
FRAME_S, SOUND_RMS, MIN_SOUND_S = 0.02, 10 ** (-50 / 20), 0.5
#: Channels a clip may have (more is not audio laid out the way we think).
MAX_CHANNELS = 8
METADATA_FILE = "voices.json"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_voice_name(name: object) -> str:
    """The name, stripped, or :class:`VoiceNameError` (1-64 of ``A-Za-z0-9_.-``, alphanumeric first)."""
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise VoiceNameError(
            f"voice name must be 1-64 characters of letters, digits, '_', '.', '-' "
            f"starting with a letter or digit, got {name!r}"
        )
    return name.strip()


def _as_float(audio: object) -> np.ndarray:
    array = np.asarray(audio)
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype == np.int32:
        return (array / 2147483648.0).astype(np.float32)
    if array.dtype == np.uint8:  # 8-bit WAV: unsigned around 128
        return (array.astype(np.float32) - 128.0) / 128.0
    if not np.issubdtype(array.dtype, np.floating):
        raise VoiceClipError(f"a clip must hold int16, int32 or float samples, got {array.dtype}")
    return array.astype(np.float32)


def _mono(array: np.ndarray) -> np.ndarray:
    if array.ndim == 1:
        return array
    if array.ndim == 2 and min(array.shape) <= MAX_CHANNELS:
        axis = 1 if array.shape[1] <= array.shape[0] else 0
        return array.mean(axis=axis, dtype=np.float32)
    raise VoiceClipError(
        f"a clip must be mono (samples,) or (samples, channels<= {MAX_CHANNELS}), "
        f"got shape {array.shape}"
    )


def prepare_clip(audio: object, sample_rate: object, target_rate: int) -> np.ndarray:
    """A reference clip as float32 mono at ``target_rate``, or a :class:`VoiceClipError`.

    Checks, in this order: the rate (an integer within 8-192 kHz), the samples (numbers,
    finite, mono or few channels, averaged), the length (2-60 s), silence (less than
    0.5 s of 20 ms frames at -50 dBFS or more). The result is a new array; the caller's
    clip is not kept.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
        raise SampleRateError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SampleRateError(
            f"sample_rate {rate} Hz cannot be resampled: clips must be {MIN_RATE}-{MAX_RATE} Hz"
        )
    clip = _mono(_as_float(audio))
    if not np.all(np.isfinite(clip)):
        raise VoiceClipError("the clip holds NaN or infinite samples")
    seconds = clip.size / rate
    if seconds < MIN_CLIP_S:
        raise ClipTooShortError(
            f"the clip is {seconds:.2f} s long; a voice needs at least {MIN_CLIP_S:g} s of speech"
        )
    if seconds > MAX_CLIP_S:
        raise ClipTooLongError(
            f"the clip is {seconds:.1f} s long; at most {MAX_CLIP_S:g} s are accepted "
            "(trim it to the clearest stretch of speech)"
        )
    frame = max(1, int(FRAME_S * rate))
    frames = clip[: clip.size // frame * frame].reshape(-1, frame).astype(np.float64)
    loud = np.sqrt(np.mean(np.square(frames), axis=1)) >= SOUND_RMS
    if loud.sum() * FRAME_S < MIN_SOUND_S:
        peak = float(np.max(np.abs(clip)))
        level = -math.inf if peak == 0 else 20 * math.log10(peak)
        raise SilentClipError(
            f"the clip is silent: {loud.sum() * FRAME_S:.2f} s of sound at -50 dBFS or more "
            f"(peak {level:.0f} dBFS), at least {MIN_SOUND_S:g} s needed"
        )
    return StreamResampler(rate, target_rate).process(clip, last=True)


@runtime_checkable
class ClonesVoices(Protocol):
    """A backend that takes voices from reference clips."""

    #: The rate clips are handed over at (the model's feature extractor rate).
    clip_rate: int

    def add_voice(self, name: str, clip: np.ndarray) -> None:
        """Make ``name`` speak like ``clip`` (float32 mono at :attr:`clip_rate`; blocking)."""

    def remove_voice(self, name: str) -> None:
        """Forget a voice made from a clip (``UnknownVoiceError`` if there is none)."""


@dataclass(frozen=True)
class VoiceEntry:
    """One voice of a :class:`VoiceDirectory`: its name, WAV file and what is said about it."""

    name: str
    file: Path
    description: str | None = None
    consent: str | None = None


class VoiceDirectory:
    """A folder of reference WAVs and their ``voices.json`` (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()

    # -- reading ------------------------------------------------------------------------

    def _metadata(self) -> dict[str, dict]:
        file = self.path / METADATA_FILE
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VoiceError(f"cannot read {file}: {exc}") from exc
        if not isinstance(data, dict):
            raise VoiceError(f"{file} must map voice names to entries")
        return data

    def _inside(self, file_name: object) -> Path | None:
        """The file ``file_name`` names inside the folder, or None (separators, escapes)."""
        if not isinstance(file_name, str) or not file_name or file_name != Path(file_name).name:
            return None
        if file_name in (".", ".."):
            return None
        path = (self.path / file_name).resolve()
        return path if path.parent == self.path.resolve() else None

    def entries(self) -> list[VoiceEntry]:
        """The folder's voices: ``voices.json`` entries first, then unlisted WAVs by stem."""
        if not self.path.is_dir():
            raise VoiceError(f"voices_dir {self.path} is not a directory")
        found: dict[str, VoiceEntry] = {}
        named_files: set[Path] = set()
        for raw_name, raw in self._metadata().items():
            try:
                name = check_voice_name(raw_name)
            except VoiceNameError as exc:
                logger.warning(f"{self.path / METADATA_FILE}: skipped: {exc}")
                continue
            entry = raw if isinstance(raw, dict) else {"file": raw}
            file = self._inside(entry.get("file"))
            if file is None or not file.is_file():
                logger.warning(
                    f"{self.path / METADATA_FILE}: voice {name!r} skipped: its file must be "
                    f"a WAV inside {self.path}, got {entry.get('file')!r}"
                )
                continue
            named_files.add(file)
            found[name.lower()] = VoiceEntry(
                name, file, _text(entry.get("description")), _text(entry.get("consent"))
            )
        for file in sorted(self.path.glob("*.wav")):
            if file.resolve() in named_files:
                continue
            try:
                name = check_voice_name(file.stem)
            except VoiceNameError:
                logger.warning(f"{file}: skipped: its stem is not a voice name")
                continue
            found.setdefault(name.lower(), VoiceEntry(name, file.resolve()))
        return list(found.values())

    @staticmethod
    def read(entry: VoiceEntry) -> tuple[np.ndarray, int]:
        """The entry's samples (float32, channels kept) and rate (soundfile, else 16-bit PCM)."""
        try:
            try:
                import soundfile
            except ImportError:  # pragma: no cover - soundfile comes with the vibevoice extra
                return _read_pcm16(entry.file)
            audio, rate = soundfile.read(str(entry.file), dtype="float32", always_2d=False)
            return audio, int(rate)
        except VoiceClipError:
            raise
        except Exception as exc:
            raise VoiceClipError(f"cannot read {entry.file}: {exc}") from exc

    # -- writing ------------------------------------------------------------------------

    def save(
        self,
        name: str,
        clip: np.ndarray,
        sample_rate: int,
        description: str | None = None,
        consent: str | None = None,
    ) -> VoiceEntry:
        """Write ``clip`` as ``<name>.wav`` (16-bit mono) and its entry in ``voices.json``.

        The metadata file is replaced atomically, so a crash leaves the old or the new one.
        """
        name = check_voice_name(name)
        self.path.mkdir(parents=True, exist_ok=True)
        file = self.path / f"{name}.wav"
        write_wav(file, float_to_pcm16(clip), sample_rate)
        data = self._metadata()
        data = {k: v for k, v in data.items() if k.lower() != name.lower()}
        entry: dict[str, str] = {"file": file.name}
        if description:
            entry["description"] = description
        if consent:
            entry["consent"] = consent
        data[name] = entry
        self._write_metadata(data)
        return VoiceEntry(name, file.resolve(), description, consent)

    def remove(self, name: str) -> bool:
        """Delete a voice's entry and its WAV; False when the folder does not have it."""
        for entry in self.entries():
            if entry.name.lower() == name.lower():
                data = {k: v for k, v in self._metadata().items() if k.lower() != name.lower()}
                self._write_metadata(data)
                entry.file.unlink(missing_ok=True)
                return True
        return False

    def _write_metadata(self, data: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".voices-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, ensure_ascii=False)
                out.write("\n")
            os.replace(tmp, self.path / METADATA_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read_pcm16(file: Path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(file), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise VoiceClipError(f"{file}: only 16-bit PCM WAV can be read without soundfile")
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return frames.reshape(-1, wav.getnchannels()).astype(
            np.float32
        ) / 32768.0, wav.getframerate()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
