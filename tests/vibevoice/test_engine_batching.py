"""Batched VibeVoice through the public ``TTSEngine`` API, against the unbatched engine."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.engine.config import ConfigError
from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
    VibeVoiceRealtimeModel,
)

TEXTS = [
    "Hello there, my friend. How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "Voice bots answer in real time: they listen, think, and speak.",
    "Streaming speech starts as soon as the first window of text is ready.",
]
#: The engines run the model in float64, where batched and single-row products agree to
#: ~1e-12; the audio is then handed out in float32 and PCM16, and two values that close
#: round to the same PCM16 step or, right at a half step, to adjacent ones: 1 LSB.
LSB_TOLERANCE = 1


@pytest.fixture(scope="module")
def engines(model_dir: Path) -> Iterator[dict[int, TTSEngine]]:
    """Engines with max_batch 1 (unbatched), 2 and 4; EOS silenced for fixed lengths."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            VibeVoiceRealtimeModel,
            "eos_logit",
            lambda self, hidden: torch.full((hidden.shape[0],), -4.0),
        )
        built = {}
        for max_batch in (1, 2, 4):
            config = TTSConfig(
                engine="vibevoice",
                model_path=str(model_dir),
                device="cpu",
                dtype="float64",
                max_batch=max_batch,
            )
            built[max_batch] = TTSEngine(config)
            asyncio.run(built[max_batch].initialize())
        yield built
        for engine in built.values():
            asyncio.run(engine.cleanup())


async def collect(stream: AsyncIterator[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join([chunk async for chunk in stream]), "<i2").astype(int)


async def words(text: str) -> AsyncIterator[str]:
    parts = text.split(" ")
    for i, word in enumerate(parts):
        yield word if i == len(parts) - 1 else word + " "
        await asyncio.sleep(0.005)


def requests(n: int) -> list[tuple[object, dict]]:
    """``n`` different utterances: texts, seeds, lengths, one streamed text, two solvers."""
    out = []
    for i in range(n):
        options = dict(seed=40 + i, max_latents=5 + 2 * (i % 3), inference_steps=2)
        if i % 4 == 3:
            options["solver"] = "dpmsolver++"
        out.append((TEXTS[i % len(TEXTS)], options))
    return out


def assert_close_audio(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for a, b in zip(got, want, strict=True):
        assert len(a) == len(b) > 0
        assert np.abs(a - b).max() <= LSB_TOLERANCE


async def test_concurrent_streams_equal_one_by_one_unbatched(engines) -> None:
    batched, unbatched = engines[4], engines[1]
    jobs = requests(4)
    alone = [await collect(unbatched.synthesize_streaming(t, **o)) for t, o in jobs]
    streamed_text = words(jobs[1][0])  # one request streams its text in
    sources = [streamed_text if i == 1 else text for i, (text, _) in enumerate(jobs)]
    together = await asyncio.wait_for(
        asyncio.gather(
            *(
                collect(batched.synthesize_streaming(src, **o))
                for src, (_, o) in zip(sources, jobs, strict=True)
            )
        ),
        timeout=120,
    )
    assert_close_audio(list(together), alone)
    assert batched.backend._batcher.peak_batch_size >= 2  # they shared model steps


async def test_more_streams_than_max_batch_all_finish(engines) -> None:
    """6 streams on max_batch 2: extras wait on the event loop, nobody starves a worker."""
    engine, unbatched = engines[2], engines[1]
    jobs = requests(6)
    together = await asyncio.wait_for(
        asyncio.gather(*(collect(engine.synthesize_streaming(t, **o)) for t, o in jobs)),
        timeout=120,
    )
    alone = [await collect(unbatched.synthesize_streaming(t, **o)) for t, o in jobs]
    assert_close_audio(list(together), alone)
    assert engine.backend._batcher.peak_batch_size == 2


async def test_health_reports_batching_and_pool_width(engines) -> None:
    health = await engines[4].health_check()
    assert health["max_batch"] == 4 and health["batch_size"] >= 0
    assert engines[4].workers >= 4
    plain = await engines[1].health_check()
    assert plain["max_batch"] == 1 and plain["batch_size"] == 0
    assert engines[1].backend.concurrent_streams() is None
    assert engines[1].workers == max(1, min(4, os.cpu_count() or 2))  # today's sizing


async def test_unload_closes_the_batcher(model_dir: Path) -> None:
    engine = TTSEngine(
        TTSConfig(engine="vibevoice", model_path=str(model_dir), device="cpu", max_batch=3)
    )
    await engine.initialize()
    batcher = engine.backend._batcher
    assert batcher.alive and engine.backend.concurrent_streams() == 3
    await engine.cleanup()
    assert not batcher.alive


def test_max_batch_setting_env_flag_and_range() -> None:
    assert TTSConfig().max_batch == 8
    assert TTSConfig.from_env({"PIPECAT_VIBEVOICE_MAX_BATCH": "3"}).max_batch == 3
    parser = argparse.ArgumentParser()
    TTSConfig.add_cli_arguments(parser)
    assert TTSConfig.from_args(parser.parse_args(["--max-batch", "16"]), {}).max_batch == 16
    for bad in (0, 65):
        with pytest.raises(ConfigError, match="max_batch"):
            TTSConfig(max_batch=bad)
