"""Benchmark our VibeVoice-Realtime loop on the tiny fixture model, on CPU.

What it measures (the tiny model is random: the figures are about the *loop and
plumbing* — Python overhead, scheduler, caches, decoder — not about speech quality):

* loop: latents per second and time to the first latent of ``generate`` (one text
  window through both LMs + one diffusion sample + one decode);
* engine: time to the first PCM chunk through the public ``TTSEngine`` API, for a
  whole string and for text streamed word by word.

Usage::

    .venv/bin/python bench/vibevoice_tiny_cpu.py [--threads 2] [--latents 60] [--json out.json]

Needs the shared fixtures (``../shared/fixtures/vibevoice-realtime-tiny``). The tiny
model has no tokenizer, so a small byte-level BPE is trained in a temp dir first.
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

FIXTURE = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "vibevoice-realtime-tiny"
).resolve()
TEXT = (
    "Hello there, my friend. Streaming speech starts as soon as the first window of "
    "text is ready, and the model keeps reading while it speaks."
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def make_model_dir(root: Path) -> Path:
    """Symlinks to the fixture plus a freshly trained tiny tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    model = root / "model"
    (model / "voices").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (model / name).symlink_to(FIXTURE / name)
    (model / "voices" / "voice_preset.pt").symlink_to(FIXTURE / "voice_preset.pt")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([TEXT] * 8, trainer)
    tok.save(str(model / "tokenizer.json"))
    return model


def no_eos() -> None:
    """The random tiny model's EOS head fires at random: switch it off for steady runs."""
    import torch

    from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
        VibeVoiceRealtimeModel,
    )

    VibeVoiceRealtimeModel.eos_logit = lambda self, h: torch.full((h.shape[0],), -4.0)


def bench_loop(latents: int, repeats: int) -> dict:
    from pipecat_vibevoice.models.vibevoice_realtime.checkpoint import load_model
    from pipecat_vibevoice.models.vibevoice_realtime.generation import (
        FixedTokens,
        GenerationSettings,
        TorchNoise,
        generate,
    )
    from pipecat_vibevoice.models.vibevoice_realtime.presets import load_preset

    model = load_model(FIXTURE)
    preset = load_preset(FIXTURE / "voice_preset.pt")
    ids = list(range(10, 10 + 60))
    settings = GenerationSettings(max_latents=latents)
    list(generate(model, preset, FixedTokens(ids), GenerationSettings(max_latents=3)))  # warm
    firsts, rates = [], []
    for seed in range(repeats):
        started = time.perf_counter()
        first = None
        count = 0
        for _ in generate(model, preset, FixedTokens(ids), settings, TorchNoise(seed)):
            count += 1
            if first is None:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
        firsts.append(first)
        rates.append(count / total)
    return {
        "latents_per_run": latents,
        "latents_per_s_median": round(statistics.median(rates), 1),
        "audio_x_realtime_median": round(statistics.median(rates) / 7.5, 1),
        "first_latent_ms_median": round(statistics.median(firsts) * 1000, 2),
        "runs": repeats,
    }


async def bench_engine(model_dir: Path, repeats: int) -> dict:
    from pipecat_vibevoice.engine import TTSConfig, TTSEngine

    engine = TTSEngine(TTSConfig(engine="vibevoice", model_path=str(model_dir), device="cpu"))
    await engine.initialize()

    async def first_chunk(text_or_stream) -> float:
        started = time.perf_counter()
        stream = engine.synthesize_streaming(text_or_stream, max_latents=12)
        try:
            await anext(stream)
            return time.perf_counter() - started
        finally:
            await stream.aclose()

    async def words():
        for word in TEXT.split(" "):
            yield word + " "

    whole = [await first_chunk(TEXT) for _ in range(repeats)]
    streamed = [await first_chunk(words()) for _ in range(repeats)]
    await engine.cleanup()
    return {
        "first_chunk_ms_whole_text_median": round(statistics.median(whole) * 1000, 2),
        "first_chunk_ms_streamed_words_median": round(statistics.median(streamed) * 1000, 2),
        "chunk_ms": 80,
        "runs": repeats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latents", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (FIXTURE / "config.json").is_file():
        print(f"fixture not found: {FIXTURE}", file=sys.stderr)
        return 2
    import torch
    from loguru import logger

    logger.remove()
    torch.set_num_threads(args.threads)
    no_eos()
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": args.threads,
        "loop": bench_loop(args.latents, args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["engine"] = asyncio.run(bench_engine(make_model_dir(Path(tmp)), args.repeats))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
