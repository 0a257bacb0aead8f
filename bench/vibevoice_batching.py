"""Cross-utterance batching of VibeVoice: N concurrent utterances, batched vs unbatched.

Runs the tiny fixture model on CPU through the public ``TTSEngine`` API, twice per N in
the same process: an engine with ``max_batch=1`` (today's path: one generation loop per
stream, each on its own worker thread) and one with ``max_batch`` ≥ N (one batched model
step serves every active stream). N concurrent ``synthesize_streaming`` calls of the same
text, each with its own seed and a fixed number of latents (EOS off), report:

* aggregate latents/s (all streams' latents / wall time);
* per-utterance time to the first chunk (= first latent: one latent covers the first
  80 ms chunk), p50;
* the ratio batched / unbatched of the throughput.

This is a CPU figure on a toy model (hidden size 64): its steps are microseconds of
arithmetic and mostly Python and dispatch overhead, so the gain here shows how much
per-step overhead batching removes, not what a GPU gains. Real gains need a GPU, where
a step of the 0.5B model for 8 streams costs about what it costs for one; we had none
to measure that.

Usage::

    .venv/bin/python bench/vibevoice_batching.py [--sizes 1 4 8] [--latents 24] [--threads 1]

Needs the shared fixtures (``../shared/fixtures/vibevoice-realtime-tiny``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vibevoice_tiny_cpu import FIXTURE, TEXT, make_model_dir, no_eos  # noqa: E402


async def run_streams(engine, n: int, latents: int, steps: int) -> dict:
    """N concurrent utterances; wall time, latents and first-chunk latencies."""
    started = time.perf_counter()
    firsts: list[float] = []
    samples: list[int] = []

    async def one(seed: int) -> None:
        first = None
        total = 0
        stream = engine.synthesize_streaming(
            TEXT, seed=seed, max_latents=latents, inference_steps=steps
        )
        async for pcm in stream:
            if first is None:
                first = time.perf_counter() - started
            total += len(pcm) // 2
        firsts.append(first if first is not None else float("nan"))
        samples.append(total)

    await asyncio.gather(*(one(100 + i) for i in range(n)))
    wall = time.perf_counter() - started
    produced = sum(samples) / 3200  # 24 kHz out = native rate: 3200 samples per latent
    return {
        "latents": produced,
        "wall_s": wall,
        "latents_per_s": produced / wall,
        "first_chunk_p50_ms": statistics.median(firsts) * 1000,
    }


async def measure(model_dir: Path, max_batch: int, n: int, args: argparse.Namespace) -> dict:
    from pipecat_vibevoice.engine import TTSConfig, TTSEngine

    config = TTSConfig(
        engine="vibevoice",
        model_path=str(model_dir),
        device="cpu",
        max_batch=max_batch,
        num_threads=args.threads,
    )
    engine = TTSEngine(config)
    await engine.initialize()
    workers = engine.workers
    try:
        await run_streams(engine, n, 3, args.steps)  # warm-up
        runs = [await run_streams(engine, n, args.latents, args.steps) for _ in range(args.repeats)]
    finally:
        await engine.cleanup()
    best = max(runs, key=lambda r: r["latents_per_s"])
    best["first_chunk_p50_ms"] = statistics.median(r["first_chunk_p50_ms"] for r in runs)
    best["workers"] = workers
    return best


def table(results: list[dict]) -> str:
    lines = [
        f"{'N':>3} | {'unbatched lat/s':>15} | {'batched lat/s':>13} | {'ratio':>5} | "
        f"{'first p50 unb.':>14} | {'first p50 bat.':>14}",
        "-" * 81,
    ]
    for r in results:
        lines.append(
            f"{r['n']:>3} | {r['unbatched']['latents_per_s']:>15.1f} | "
            f"{r['batched']['latents_per_s']:>13.1f} | {r['ratio']:>5.2f} | "
            f"{r['unbatched']['first_chunk_p50_ms']:>11.0f} ms | "
            f"{r['batched']['first_chunk_p50_ms']:>11.0f} ms"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict]:
    import torch
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    torch.set_num_threads(args.threads)
    no_eos()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp))
        for n in args.sizes:
            unbatched = await measure(model_dir, 1, n, args)
            batched = await measure(model_dir, max(2, n), n, args)
            results.append(
                {
                    "n": n,
                    "unbatched": unbatched,
                    "batched": batched,
                    "ratio": batched["latents_per_s"] / unbatched["latents_per_s"],
                }
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8], help="concurrent N")
    parser.add_argument("--latents", type=int, default=24, help="latents per utterance")
    parser.add_argument("--steps", type=int, default=5, help="diffusion steps per latent")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (FIXTURE / "config.json").is_file():
        print(f"missing fixture {FIXTURE}", file=sys.stderr)
        return 2
    results = asyncio.run(main_async(args))
    print(
        f"VibeVoice batching, tiny fixture model, CPU ({platform.processor() or platform.machine()}"
        f", torch threads {args.threads}), {args.latents} latents x {args.steps} steps per utterance"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
