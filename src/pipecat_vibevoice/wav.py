"""WAV output shared by the command-line tools (stdlib only, so light clients stay light)."""

from __future__ import annotations

import wave
from pathlib import Path


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    """Write mono 16-bit PCM to a WAV file, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
