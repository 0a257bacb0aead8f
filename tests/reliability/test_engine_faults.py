"""Engine faults: a backend that dies mid-stream, weights that fail to load, fuzzed input.

The engine must turn each of these into a clear error (or a documented fallback) and go
on serving the next request.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability.harness import start_all_workers

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.engine.backends.piper import PiperBackend


class FlakyPiper(PiperBackend):
    """The real Piper backend, made to fail after a few pieces when ``fail_next`` is set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_next = False

    def stream(self, request):
        for count, piece in enumerate(super().stream(request)):
            if self.fail_next and count == 2:
                self.fail_next = False
                raise RuntimeError("simulated inference failure (e.g. CUDA error)")
            yield piece


async def test_backend_failure_mid_stream_reaches_the_caller_and_the_next_utterance_works() -> None:
    flaky: dict[str, FlakyPiper] = {}

    def factory(config: TTSConfig) -> FlakyPiper:
        flaky["backend"] = FlakyPiper()
        return flaky["backend"]

    engine = TTSEngine(TTSConfig(engine="piper"), backend_factory=factory)
    try:
        await engine.initialize()
        flaky["backend"].fail_next = True
        received = 0
        with pytest.raises(RuntimeError, match="simulated inference failure"):
            async for chunk in engine.synthesize_streaming(
                "A sentence long enough to need several windows of audio."
            ):
                received += len(chunk)
        assert received > 0  # the failure came mid-stream, after some audio
        chunks = [c async for c in engine.synthesize_streaming("And this one works.")]
        assert sum(map(len, chunks)) > 24000
        health = await engine.health_check()
        assert health["failures"] == 1 and health["active_streams"] == 0
        assert health["status"] == "ok"
    finally:
        await engine.cleanup()


async def test_corrupt_vibevoice_weights_fall_back_to_the_bundled_voice(tmp_path) -> None:
    """A real broken checkpoint directory: auto serves the CPU voice and health says degraded."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vibevoice_streaming"}))
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    engine = TTSEngine(TTSConfig(engine="auto", model_path=str(tmp_path), load_retries=2))
    try:
        await engine.initialize()
        health = await engine.health_check()
        assert health["engine"] == "piper"
        assert health["status"] == "degraded"
        assert "vibevoice" in health["fallback_reason"]
        assert [c async for c in engine.synthesize_streaming("Still speaking.")]
    finally:
        await engine.cleanup()


async def test_hang_up_leaves_no_thread_or_work_behind() -> None:
    engine = TTSEngine(TTSConfig(engine="piper"))
    await engine.initialize()
    try:
        # One warm stream so the worker pool has its threads before we count.
        async for _ in engine.synthesize_streaming("Warm the pool."):
            pass
        # ...all of them: the bounded pool starts workers lazily, so closing a stream
        # could otherwise start its last worker after the count (no leak, a flaky test).
        await start_all_workers(engine)
        threads_before = threading.active_count()
        for _ in range(5):
            stream = engine.synthesize_streaming(
                "This long utterance is abandoned after one chunk. " * 5
            )
            await stream.__anext__()
            await stream.aclose()
        await asyncio.sleep(0.3)
        assert threading.active_count() <= threads_before
        assert (await engine.health_check())["active_streams"] == 0
    finally:
        await engine.cleanup()


@pytest.fixture(scope="module")
def fuzz_engine():
    engine = TTSEngine(TTSConfig(engine="piper", max_text_chars=300))
    asyncio.run(engine.initialize())
    yield engine
    asyncio.run(engine.cleanup())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=st.one_of(
        st.text(max_size=80),
        st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "So"]), max_size=40),
        st.just(""),
        st.text(min_size=301, max_size=320),
    ),
    speed=st.one_of(st.floats(min_value=0.0, max_value=3.0), st.just(float("nan"))),
    pitch=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0)),
    voice=st.one_of(st.integers(-3, 3), st.text(max_size=12), st.none()),
)
def test_fuzzed_engine_input_gives_audio_or_a_value_error(
    fuzz_engine, text, speed, pitch, voice
) -> None:
    """Any text/controls: either PCM (even-length chunks) or a ValueError — never anything else."""

    async def run() -> None:
        try:
            async for chunk in fuzz_engine.synthesize_streaming(text, voice, speed, pitch):
                assert isinstance(chunk, bytes) and len(chunk) % 2 == 0
        except ValueError:
            pass

    asyncio.run(run())
