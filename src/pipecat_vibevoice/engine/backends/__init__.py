"""Voice backends and the rule that picks one from the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import TTSConfig
from .base import AudioPiece, BackendUnavailable, SpeechBackend, SynthesisRequest, TextSource

BackendFactory = Callable[[TTSConfig], SpeechBackend]


def make_piper(config: TTSConfig) -> SpeechBackend:
    """The bundled CPU voice."""
    from .piper import PiperBackend

    cache = Path(config.cache_dir) / "piper" if config.cache_dir else None
    return PiperBackend(
        cache_dir=cache, num_threads=config.num_threads, release_memory=config.release_memory
    )


def make_vibevoice(config: TTSConfig) -> SpeechBackend:
    """VibeVoice-Realtime; raises :class:`BackendUnavailable` when torch or the weights are missing."""
    try:
        from .vibevoice import VibeVoiceBackend
    except ImportError as exc:
        raise BackendUnavailable(
            f"VibeVoice needs the 'vibevoice' extra (torch, transformers, diffusers): {exc}"
        ) from exc
    return VibeVoiceBackend(config)


def resolve_engine(config: TTSConfig) -> list[tuple[str, BackendFactory]]:
    """Backends to try, in order: ``auto`` tries VibeVoice, then the bundled voice."""
    if config.engine == "piper":
        return [("piper", make_piper)]
    if config.engine == "vibevoice":
        return [("vibevoice", make_vibevoice)]
    return [("vibevoice", make_vibevoice), ("piper", make_piper)]


__all__ = [
    "AudioPiece",
    "BackendFactory",
    "BackendUnavailable",
    "SpeechBackend",
    "SynthesisRequest",
    "TextSource",
    "make_piper",
    "make_vibevoice",
    "resolve_engine",
]
