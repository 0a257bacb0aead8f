"""Giving scratch memory back after each utterance changes no sample of the audio.

How much memory it saves is measured by ``bench/reliability_soak.py`` (README's
reliability table); here: the switch works, is exact, and survives cancellation.
"""

from __future__ import annotations

import asyncio
import platform
from threading import Event

import numpy as np
import psutil

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.engine.backends.piper import PiperBackend
from pipecat_vibevoice.engine.memory import pin_mmap_threshold

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Seven bright stars shine while the river runs quietly past the old mill.",
]


def _backend(release: bool) -> PiperBackend:
    backend = PiperBackend(release_memory=release)
    backend.load()
    return backend


def test_released_memory_gives_the_same_audio():
    """Piper's frontend samples noise, so the comparison is on one latent: the windowed
    decoder (whose last window shrinks the arena) gives the same samples either way,
    also after a stream was abandoned before its last window."""
    kept, released = _backend(False), _backend(True)
    try:
        for text in TEXTS:
            ids = kept.phoneme_ids(text)[0]
            latent, mask = kept._run_frontend(ids, kept._scales)
            a = np.concatenate([p.audio for p in kept._decode_windows(latent, mask, Event())])
            abandoned = released._decode_windows(latent, mask, Event())
            next(abandoned)
            abandoned.close()
            b = np.concatenate([p.audio for p in released._decode_windows(latent, mask, Event())])
            assert a.size > 22050
            assert np.array_equal(a, b)
    finally:
        kept.unload()
        released.unload()


def test_mmap_threshold_is_pinned_once_on_glibc():
    first = pin_mmap_threshold()
    assert pin_mmap_threshold() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True


def test_rss_stays_near_the_loaded_size_over_repeated_utterances():
    """Coarse guard (the soak bench has the real figure): 80 utterances, two at a time,
    add less than 50 MiB to the RSS of the freshly loaded engine. Measured here: ~6 MiB
    with the memory given back, ~145 MiB without (ORT's arena keeps its peak)."""

    async def run() -> tuple[float, float]:
        engine = TTSEngine(TTSConfig(engine="piper"))
        await engine.initialize()
        process = psutil.Process()
        try:
            loaded = process.memory_info().rss

            async def say(n: int) -> None:
                async for _ in engine.synthesize_streaming(f"Utterance {n}: {TEXTS[n % 2]}"):
                    pass

            for n in range(0, 80, 2):
                await asyncio.gather(say(n), say(n + 1))
            return loaded, process.memory_info().rss
        finally:
            await engine.cleanup()

    loaded, after = asyncio.run(run())
    grown = (after - loaded) / 2**20
    assert grown < 50, f"RSS {loaded / 2**20:.0f} -> {after / 2**20:.0f} MiB (+{grown:.0f})"


def test_a_stream_cut_short_gives_its_memory_back_once_idle():
    """Cancelled streams never reach their last window; the engine releases when idle."""

    async def run() -> tuple[float, float, int]:
        engine = TTSEngine(TTSConfig(engine="piper"))
        await engine.initialize()
        backend = engine.backend
        calls = 0
        original = backend.release_idle_memory

        def counted() -> None:
            nonlocal calls
            calls += 1
            original()

        backend.release_idle_memory = counted
        process = psutil.Process()
        try:
            loaded = process.memory_info().rss
            for n in range(30):
                stream = engine.synthesize_streaming(f"Number {n}. {TEXTS[1]} {TEXTS[0]}")
                await anext(stream)
                await stream.aclose()
            await asyncio.sleep(0.3)  # the release runs on a worker thread
            return loaded, process.memory_info().rss, calls
        finally:
            await engine.cleanup()

    loaded, after, calls = asyncio.run(run())
    assert calls == 30
    grown = (after - loaded) / 2**20
    assert grown < 30, f"RSS {loaded / 2**20:.0f} -> {after / 2**20:.0f} MiB (+{grown:.0f})"
