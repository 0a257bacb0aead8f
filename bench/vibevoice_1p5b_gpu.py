"""Benchmark VibeVoice-1.5B (transformers' model, voices from reference audio) through ``TTSEngine``.

Per reference-clip length (``--clip-seconds``, default 3, 10 and 30 s) it adds a voice
from a clip of that length and speaks the same text ``--runs`` times (after a warm-up),
measuring:

* the voice: time to encode the clip, and the audio tokens it adds to every prompt;
* time to first chunk (TTFC) of ``stream_chunks`` and its p50/p95 over the runs (a longer
  clip means a longer prompt to prefill before the first latent);
* real-time factor (synthesis time / audio duration) and latents per second;
* memory: on CUDA the peak allocated and reserved by torch for that clip length (stats
  reset per length); on CPU the process's peak RSS.

Runs as is on a GPU machine with the weights::

    python bench/vibevoice_1p5b_gpu.py --model-path /models/VibeVoice-1.5B-hf \\
        [--clip speaker.wav] [--runs 5] [--json out.json]

``--model-path`` is a transformers-format directory (model and processor files, e.g. a
local copy of ``vibevoice/VibeVoice-1.5B-hf``) or a hub id already in the HF cache.
``--clip`` is a WAV of real speech (looped or cut to each length; use a recording of
someone who agreed to it); without it a synthetic voiced buzz stands in, which times the
same but sounds like nothing. Exits 2 when the weights are missing and 3 without CUDA
(``--allow-cpu`` runs anyway).

``--tiny`` proves the script on any machine: it builds the tests' tiny random checkpoint
(``tests/vibevoice_1p5b/tiny_model.py``) in a temporary directory and runs on the CPU.
Those figures are the tiny model's on a CPU and say nothing about the real model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "The weather this afternoon looks bright and mild, with a light breeze from the west "
    "and temperatures around twenty degrees."
)
#: Latents per utterance for the tiny model, which never says "end" (random weights).
TINY_LATENTS = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="First chunk, RTF and memory of VibeVoice-1.5B per reference-clip length.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-path", help="transformers-format VibeVoice-1.5B dir or cached hub id"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random model on CPU (proves the script)"
    )
    parser.add_argument("--clip", type=Path, help="WAV of reference speech (default: synthetic)")
    parser.add_argument(
        "--clip-seconds", type=float, nargs="+", default=[3.0, 10.0, 30.0], help="clip lengths"
    )
    parser.add_argument("--text", default=TEXT, help="what to say")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per clip length")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per clip length")
    parser.add_argument(
        "--cfg-scale", type=float, default=1.3, help="guidance (official demos: 1.3)"
    )
    parser.add_argument(
        "--inference-steps", type=int, default=10, help="diffusion steps per latent"
    )
    parser.add_argument("--max-latents", type=int, help="cap per utterance (default: the engine's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA")
    parser.add_argument("--seed", type=int, default=1, help="first run's seed (then +1 per run)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    if not args.tiny and not args.model_path:
        parser.error("--model-path is required (or --tiny for the tiny CPU model)")
    return args


def synthetic_speech(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A voiced buzz at a syllable rate: times like speech, sounds like nothing."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    f0 = 110 + 60 * rng.random()
    buzz = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 6))
    return (0.2 * buzz * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(np.float32)


def clip_of(
    seconds: float, source: tuple[np.ndarray, int] | None, rate: int
) -> tuple[np.ndarray, int]:
    """``seconds`` of the reference (looped when it is shorter), or of the synthetic buzz."""
    if source is None:
        return synthetic_speech(seconds, rate), rate
    audio, source_rate = source
    need = int(seconds * source_rate)
    reps = -(-need // max(1, audio.shape[0]))
    return np.concatenate([audio] * reps, axis=0)[:need], source_rate


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def memory_now(torch) -> dict:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "gpu_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


async def one_utterance(engine, text: str, voice: str, options: dict) -> dict:
    started = time.perf_counter()
    first = None
    samples = 0
    async for chunk in engine.stream_chunks(text, voice, **options):
        if first is None:
            first = time.perf_counter() - started
        samples += len(chunk.pcm) // 2
    total = time.perf_counter() - started
    audio_s = samples / engine.config.sample_rate
    return {"ttfc_s": first, "total_s": total, "audio_s": audio_s}


async def run(args: argparse.Namespace, model_path: str) -> dict:
    import torch

    from pipecat_vibevoice.engine import TTSConfig, TTSEngine
    from pipecat_vibevoice.engine.voices import VoiceDirectory, VoiceEntry

    config = TTSConfig(
        engine="vibevoice-1.5b",
        model_path=model_path,
        device="cpu" if args.tiny else args.device,
        dtype="float32" if args.tiny else args.dtype,
        cfg_scale=args.cfg_scale,
        inference_steps=args.inference_steps,
        load_retries=1,
    )
    engine = TTSEngine(config)
    started = time.perf_counter()
    await engine.initialize()
    load_s = time.perf_counter() - started
    backend = engine.backend
    described = backend.describe()
    source = None
    if args.clip:
        source = VoiceDirectory.read(VoiceEntry("clip", args.clip.resolve()))
    options: dict = {}
    cap = args.max_latents or (TINY_LATENTS if args.tiny else None)
    if cap:
        options["max_latents"] = cap
    hop_s = backend.checkpoint.hop_length / backend.checkpoint.sample_rate
    rows = []
    for seconds in args.clip_seconds:
        audio, rate = clip_of(seconds, source, backend.clip_rate)
        name = f"clip{seconds:g}s".replace(".", "_")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        await engine.add_voice(name, audio, rate)
        encode_s = time.perf_counter() - t0
        tokens = backend._voice(name).tokens
        for i in range(args.warmup):
            await one_utterance(engine, args.text, name, {**options, "seed": 10_000 + i})
        runs = [
            await one_utterance(engine, args.text, name, {**options, "seed": args.seed + i})
            for i in range(args.runs)
        ]
        ttfc = [r["ttfc_s"] for r in runs if r["ttfc_s"] is not None]
        rtf = [r["total_s"] / r["audio_s"] for r in runs if r["audio_s"]]
        latents = sum(r["audio_s"] for r in runs) / hop_s
        rows.append(
            {
                "clip_s": seconds,
                "voice_tokens": tokens,
                "encode_s": round(encode_s, 3),
                "ttfc_p50_ms": round(statistics.median(ttfc) * 1000, 1) if ttfc else None,
                "ttfc_p95_ms": round(percentile(ttfc, 95) * 1000, 1) if ttfc else None,
                "rtf_mean": round(statistics.fmean(rtf), 3) if rtf else None,
                "latents_per_s": round(latents / sum(r["total_s"] for r in runs), 2),
                "audio_s_mean": round(statistics.fmean(r["audio_s"] for r in runs), 2),
                **memory_now(torch),
            }
        )
        await engine.remove_voice(name)
    await engine.cleanup()
    import transformers

    return {
        "when_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "tiny random VibeVoice-1.5B (tests), CPU" if args.tiny else described["model"],
        "model_path": model_path,
        "device": described["device"],
        "dtype": described["dtype"],
        "parameters": described.get("parameters"),
        "load_s_incl_warmup": round(load_s, 2),
        "text_chars": len(args.text),
        "cfg_scale": args.cfg_scale,
        "inference_steps": args.inference_steps,
        "max_latents": cap,
        "clip": str(args.clip) if args.clip else "synthetic",
        "runs": args.runs,
        "results": rows,
    }


def print_report(report: dict, tiny: bool) -> None:
    head = {k: v for k, v in report.items() if k != "results"}
    print(json.dumps(head, indent=2))
    if tiny:
        print("NOTE: tiny random model on CPU: these figures prove the script, not the model.")
    columns = list(report["results"][0]) if report["results"] else []
    print(" | ".join(columns))
    for row in report["results"]:
        print(" | ".join(str(row[c]) for c in columns))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from loguru import logger

    logger.remove()  # the engine's per-utterance debug lines would bury the table
    logger.add(sys.stderr, level="WARNING")
    try:
        import torch
    except ImportError:
        print(
            "torch is not installed (pip install 'pipecat-vibevoice[vibevoice]')", file=sys.stderr
        )
        return 2
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from vibevoice_1p5b.tiny_model import build_tiny_checkpoint

        with tempfile.TemporaryDirectory(prefix="vibevoice-1.5b-tiny-") as tmp:
            report = asyncio.run(run(args, str(build_tiny_checkpoint(Path(tmp)))))
    else:
        from pipecat_vibevoice.models.vibevoice_1p5b.checkpoint import (
            CheckpointNotFoundError,
            resolve,
        )

        try:  # fail fast, before loading anything, when the weights are not here
            model_dir = resolve(args.model_path)
        except CheckpointNotFoundError as exc:
            print(f"no VibeVoice-1.5B checkpoint: {exc}", file=sys.stderr)
            return 2
        if not torch.cuda.is_available() and not args.allow_cpu:
            print("no CUDA device (pass --allow-cpu to run on the CPU anyway)", file=sys.stderr)
            return 3
        report = asyncio.run(run(args, str(model_dir)))
    print_report(report, args.tiny)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
