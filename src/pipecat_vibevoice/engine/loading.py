"""Which backend to load for a config, and loading it with retries and a fallback.

``engine="auto"`` tries VibeVoice first and falls back to the bundled voice; a backend
that cannot run here (missing weights or packages: :class:`BackendUnavailable`) is not
retried, one that fails to load is retried with a short backoff. Everything that went
wrong is kept, so ``health_check()`` can say why the engine serves what it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from .backends.base import SpeechBackend
from .config import TTSConfig
from .errors import BackendLoadError, BackendUnavailable

BackendFactory = Callable[[TTSConfig], SpeechBackend]


def make_piper(config: TTSConfig) -> SpeechBackend:
    """The bundled CPU voice; unless set, each call gets its share of the cores."""
    from .backends.piper import PiperBackend
    from .workers import pool_width, threads_per_call

    cache = Path(config.cache_dir) / "piper" if config.cache_dir else None
    backend = PiperBackend(
        cache_dir=cache, num_threads=config.num_threads, release_memory=config.release_memory
    )
    windows = config.piper_window_frames()
    if windows:
        backend.schedule = windows
    if not config.num_threads:
        backend.num_threads = threads_per_call(pool_width(backend))
    return backend


def make_vibevoice(config: TTSConfig) -> SpeechBackend:
    """VibeVoice-Realtime; raises :class:`BackendUnavailable` without torch or the weights."""
    try:
        from .backends.vibevoice import VibeVoiceBackend
    except ImportError as exc:
        raise BackendUnavailable(
            f"VibeVoice needs the 'vibevoice' extra (torch, transformers, diffusers): {exc}"
        ) from exc
    return VibeVoiceBackend(config)


def make_vibevoice_1p5b(config: TTSConfig) -> SpeechBackend:
    """VibeVoice-1.5B (voices from reference audio); raises :class:`BackendUnavailable`."""
    try:
        from .backends.vibevoice_1p5b import make_backend
    except ImportError as exc:
        raise BackendUnavailable(f"VibeVoice-1.5B needs the 'vibevoice' extra: {exc}") from exc
    return make_backend(config)


def candidates(config: TTSConfig) -> list[tuple[str, BackendFactory]]:
    """Backends to try, in order: ``auto`` tries VibeVoice, then the bundled voice.

    VibeVoice-1.5B is loaded only when asked for by name, never as a fallback.
    """
    if config.engine == "piper":
        return [("piper", make_piper)]
    if config.engine == "vibevoice":
        return [("vibevoice", make_vibevoice)]
    if config.engine == "vibevoice-1.5b":
        return [("vibevoice-1.5b", make_vibevoice_1p5b)]
    return [("vibevoice", make_vibevoice), ("piper", make_piper)]


@dataclass
class LoadedBackend:
    """The loaded backend and the story of getting it."""

    backend: SpeechBackend
    #: Why a later candidate serves instead of the first (None: the first loaded).
    fallback_reason: str | None = None
    errors: list[str] = field(default_factory=list)


def load_backend(
    config: TTSConfig, factory: BackendFactory | None = None, sleep=time.sleep
) -> LoadedBackend:
    """Load the first candidate that works (blocking: call it from a worker thread).

    ``factory`` replaces the config's candidates (tests, custom backends). Raises
    :class:`BackendLoadError` listing every attempt when none loads.
    """
    tries = [("custom", factory)] if factory is not None else candidates(config)
    errors: list[str] = []
    last_error: Exception | None = None
    for name, make in tries:
        for attempt in range(1, config.load_retries + 1):
            try:
                backend = make(config)
                backend.load()
            except BackendUnavailable as exc:  # missing weights or packages: retrying cannot help
                last_error = exc
                errors.append(f"{name}: {exc}")
                logger.warning(f"TTS backend {name} unavailable: {exc}")
                break
            except Exception as exc:
                last_error = exc
                errors.append(f"{name} attempt {attempt}: {exc!r}")
                logger.warning(
                    f"TTS backend {name} failed to load "
                    f"(attempt {attempt}/{config.load_retries}): {exc!r}"
                )
                if attempt < config.load_retries:
                    sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))
                continue
            fallback = None
            if name != tries[0][0]:
                fallback = f"{tries[0][0]} unavailable ({last_error}); serving the bundled {name} voice"
                logger.warning(f"TTS fallback: {fallback}")
            return LoadedBackend(backend, fallback, errors)
    raise BackendLoadError(errors) from last_error
