"""Benchmark VibeVoice-Realtime-0.5B (real weights) on a CUDA GPU, through ``TTSEngine``.

Runs as is on a machine that has the weights; on one that does not, it says what is
missing and exits with status 2 (no GPU: status 3, unless ``--allow-cpu``).

Measures, per text (several runs each, after a warm-up):

* time to first chunk (TTFC) for a whole string, and for the same text streamed word by
  word at an LLM-like rate (``--words-per-s``), counted from the first word;
* real-time factor (synthesis time / audio duration) and latents per second;
* GPU memory: peak allocated and reserved by torch, and the process's share as
  ``nvidia-smi`` would see it (``torch.cuda.mem_get_info`` before/after loading).

Usage::

    python bench/vibevoice_gpu.py --model-path /models/VibeVoice-Realtime-0.5B \\
        --voices-dir /models/voices/streaming_model [--runs 5] [--json gpu.json]

The model directory needs ``config.json`` + ``model.safetensors`` and the Qwen2.5
``tokenizer.json``; voices are the official ``*.pt`` presets (see docs/vibevoice.md).
``--model-path`` may also be a hub id already in the local HF cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

TEXTS = {
    "short": "Hello! How can I help you today?",
    "medium": (
        "The weather this afternoon looks bright and mild, with a light breeze from the "
        "west and temperatures around twenty degrees."
    ),
    "long": (
        "Streaming text to speech lets a voice assistant start talking while the language "
        "model is still writing its answer. Each text window of five tokens is followed by "
        "six speech latents, so the voice keeps a steady pace behind the text. When the "
        "user interrupts, generation stops before the next latent is computed."
    ),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-path",
        default=os.environ.get("PIPECAT_VIBEVOICE_MODEL_PATH", "microsoft/VibeVoice-Realtime-0.5B"),
    )
    parser.add_argument("--voices-dir", default=os.environ.get("PIPECAT_VIBEVOICE_VOICES_DIR"))
    parser.add_argument("--voice", default=None, help="voice name (default: the engine's)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="diffusion steps per latent")
    parser.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance")
    parser.add_argument("--words-per-s", type=float, default=15.0, help="streamed-text rate")
    parser.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    parser.add_argument("--allow-cpu", action="store_true", help="run even without CUDA")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


async def run(args: argparse.Namespace) -> dict:
    import torch

    from pipecat_vibevoice.engine import BackendUnavailable, TTSConfig, TTSEngine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    free_before = torch.cuda.mem_get_info()[0] if device == "cuda" else 0
    config = TTSConfig(
        engine="vibevoice",
        model_path=args.model_path,
        voices_dir=args.voices_dir,
        device=device,
        gpu_memory_fraction=args.gpu_memory_fraction,
        cfg_scale=args.cfg,
        inference_steps=args.steps,
        load_retries=1,
    )
    engine = TTSEngine(config)
    started = time.perf_counter()
    try:
        await engine.initialize()
    except (BackendUnavailable, RuntimeError) as exc:
        raise SystemExit(f"VibeVoice weights not usable here: {exc}") from None
    load_s = time.perf_counter() - started
    health = await engine.health_check()
    results: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": health.get("dtype"),
        "model_path": health.get("model_path"),
        "parameters": health.get("parameters"),
        "voices": len(health.get("voices", [])),
        "load_s_incl_warmup": round(load_s, 2),
        "steps": args.steps,
        "cfg_scale": args.cfg,
        "texts": {},
    }
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        results["weights_gib"] = round((free_before - torch.cuda.mem_get_info()[0]) / 2**30, 3)

    async def whole(text: str) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        first, samples = None, 0
        async for chunk in engine.synthesize_streaming(text, args.voice or 0):
            first = first or time.perf_counter() - t0
            samples += len(chunk) // 2
        return first or float("nan"), time.perf_counter() - t0, samples / config.sample_rate

    async def streamed(text: str) -> float:
        async def words():
            for word in text.split(" "):
                yield word + " "
                await asyncio.sleep(1.0 / args.words_per_s)

        t0 = time.perf_counter()
        stream = engine.synthesize_streaming(words(), args.voice or 0)
        try:
            await anext(stream)
            return time.perf_counter() - t0
        finally:
            await stream.aclose()

    for name, text in TEXTS.items():
        ttfc, rtf, lps, audio, ttfc_stream = [], [], [], [], []
        for _ in range(args.runs):
            first, total, audio_s = await whole(text)
            ttfc.append(first)
            rtf.append(total / max(audio_s, 1e-9))
            lps.append(audio_s * 7.5 / total)
            audio.append(audio_s)
            ttfc_stream.append(await streamed(text))
        results["texts"][name] = {
            "chars": len(text),
            "audio_s_median": round(statistics.median(audio), 2),
            "first_chunk_ms_median": round(statistics.median(ttfc) * 1000, 1),
            "first_chunk_ms_max": round(max(ttfc) * 1000, 1),
            "streamed_text_first_chunk_ms_median": round(statistics.median(ttfc_stream) * 1000, 1),
            "rtf_median": round(statistics.median(rtf), 3),
            "latents_per_s_median": round(statistics.median(lps), 1),
        }
    if device == "cuda":
        results["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        results["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        results["process_used_gib"] = round((free_before - torch.cuda.mem_get_info()[0]) / 2**30, 3)
    await engine.cleanup()
    return results


def main() -> int:
    args = parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install 'pipecat-vibevoice[vibevoice]'", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "no CUDA device: this benchmark is for a GPU (use --allow-cpu to run anyway)",
            file=sys.stderr,
        )
        return 3
    from pipecat_vibevoice.engine import BackendUnavailable
    from pipecat_vibevoice.engine.backends.vibevoice import VibeVoiceBackend
    from pipecat_vibevoice.engine.config import TTSConfig

    try:  # fail fast, before any model loading, when the weights are not here
        VibeVoiceBackend(TTSConfig(engine="vibevoice", model_path=args.model_path))
    except BackendUnavailable as exc:
        print(f"VibeVoice weights not found: {exc}", file=sys.stderr)
        print(
            "Point --model-path at a directory with config.json, model.safetensors and the "
            "Qwen2.5 tokenizer.json (see docs/vibevoice.md).",
            file=sys.stderr,
        )
        return 2
    try:
        results = asyncio.run(run(args))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
