"""What the remote hop costs: TTS through RemoteTTSService vs in-process (issue 11).

Two parts, both sides in the same run, interleaved round by round so a change in the
machine's load hits both:

* ``hop``: Pipecat's own TTFB metric (``run_tts`` start -> first audio frame) of
  :class:`VibeVoiceTTSService` on an engine in this process and of
  :class:`RemoteTTSService` against ``python -m pipecat_vibevoice.serving`` on
  loopback (a subprocess; same CPU voice, one ONNX thread per call, cache and store
  off), sentence by sentence. Goal: p50 overhead <= 15 ms.
* ``bot``: ``bot.py`` voice-to-voice and barge-in (bench/bot_latency.py's chain of
  turns, our client) with its in-process engine and with ``--tts-url`` pointing at that
  same TTS server. Goals: voice-to-voice p50 <= +30 ms, barge-in unchanged.

Reported, never asserted::

    flock /tmp/bench.lock nice -n 0 .venv/bin/python bench/remote_hop.py [--parts hop bot]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

from bot_harness import PHRASES, machine, pct, start_bot, summary, synthesize_phrases
from bot_latency import run_chain
from loguru import logger
from pipecat.frames.frames import MetricsFrame, TTSSpeakFrame
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test
from serving_concurrency import SENTENCES, free_port, start_server, wait_ready

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.services import RemoteTTSService, VibeVoiceTTSService


async def ttfb_run(service: object, sentences: list[str]) -> list[float]:
    """Pipecat's TTFB (seconds) of each sentence spoken by ``service`` in one pipeline."""
    down, _ = await run_test(
        service,
        frames_to_send=[TTSSpeakFrame(s) for s in sentences],
        pipeline_params=PipelineParams(enable_metrics=True),
        start_timeout=30,
    )
    return [
        d.value
        for f in down
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, TTFBMetricsData) and d.value > 0
    ]


async def hop(url: str, rounds: int) -> None:
    engine = TTSEngine(TTSConfig(engine="piper", num_threads=1))
    await engine.initialize()
    local: list[float] = []
    remote: list[float] = []
    try:
        await ttfb_run(VibeVoiceTTSService(engine), SENTENCES[:2])  # warm-up, both sides
        await ttfb_run(RemoteTTSService(url), SENTENCES[:2])
        for r in range(rounds):
            order = [("local", local), ("remote", remote)]
            for name, into in order if r % 2 == 0 else order[::-1]:
                service = VibeVoiceTTSService(engine) if name == "local" else RemoteTTSService(url)
                into += await ttfb_run(service, SENTENCES)
    finally:
        await engine.cleanup()
    print(f"hop: {machine()}")
    print(f"  in-process  TTFB {summary(local)}")
    print(f"  remote      TTFB {summary(remote)}")
    print(
        f"  overhead p50 {(pct(remote, 50) - pct(local, 50)) * 1000:+.1f} ms, "
        f"p95 {(pct(remote, 95) - pct(local, 95)) * 1000:+.1f} ms (goal: p50 <= 15 ms)"
    )


async def bot(url: str, rounds: int, trials: int, seed: int) -> None:
    phrases = await synthesize_phrases(PHRASES)
    results: dict[str, dict[str, list[float]]] = {
        k: {"v2v": [], "barge": []} for k in ("in-process", "remote")
    }
    for r in range(rounds):
        order = ["in-process", "remote"] if r % 2 == 0 else ["remote", "in-process"]
        for name in order:
            extra = ("--tts-url", url) if name == "remote" else ()
            started = start_bot("vibevoice", *extra)
            try:
                print(f"[{name} round {r + 1}] {machine()}")
                got = await run_chain(started.ws_url, phrases, trials, seed + r, False)
            finally:
                started.stop()
            results[name]["v2v"] += got["v2v"]
            results[name]["barge"] += got["barge"]
    for name, got in results.items():
        print(f"  {name:10s} voice-to-voice {summary(got['v2v'])}")
        print(f"  {name:10s} barge-in       {summary(got['barge'])}")
    a, b = results["remote"], results["in-process"]
    print(
        f"  voice-to-voice p50 {(pct(a['v2v'], 50) - pct(b['v2v'], 50)) * 1000:+.0f} ms "
        f"(goal <= +30 ms); barge-in p95 {pct(a['barge'], 95) * 1000:.0f} vs "
        f"{pct(b['barge'], 95) * 1000:.0f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("hop", "bot"), default=["hop", "bot"])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per part")
    parser.add_argument("--trials", type=int, default=10, help="barge-in trials per bot round")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logger.remove()  # Pipecat's per-frame debug lines would drown the figures
    logger.add(sys.stderr, level="WARNING")

    print(f"remote hop benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    port = free_port()
    server = start_server(port, max_active=16, threads=1)
    url = f"ws://127.0.0.1:{port}/v1/tts/stream"
    started = time.perf_counter()
    try:
        await wait_ready(url)
        if "hop" in args.parts:
            await hop(url, args.rounds)
        if "bot" in args.parts:
            await bot(url, max(2, args.rounds // 2), args.trials, args.seed)
    finally:
        server.terminate()
        server.wait(10)
    print(f"done in {time.perf_counter() - started:.0f} s, {machine()}")


if __name__ == "__main__":
    asyncio.run(main())
