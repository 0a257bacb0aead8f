"""``pipecat-vibevoice`` command line: speak text to WAV files and list voices.

Examples::

    pipecat-vibevoice say "Hello there." -o hello.wav
    echo "From stdin." | pipecat-vibevoice say -o stdin.wav
    pipecat-vibevoice say --file lines.txt -o out/      # one WAV per line, with progress
    pipecat-vibevoice say --list-voices
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from loguru import logger

from .engine import TTSConfig, TTSEngine
from .engine.controls import PITCH, SPEED
from .wav import write_wav


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="pipecat-vibevoice",
        description="Real-time TTS engine (VibeVoice-Realtime or the bundled CPU voice).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    say = sub.add_parser(
        "say",
        help="speak text to a WAV file",
        description=(
            "Speak TEXT (or stdin, or a file with one utterance per line) and write WAV. "
            "Prints first-chunk latency, audio length and real-time factor."
        ),
    )
    say.add_argument("text", nargs="?", help="text to speak; '-' or omitted reads stdin")
    say.add_argument("-f", "--file", type=Path, help="text file, one utterance per line")
    say.add_argument(
        "-o",
        "--output",
        type=Path,
        help="WAV path (default out.wav); with --file, a directory (default out/)",
    )
    say.add_argument("--voice", default=None, help="voice name or index (see --list-voices)")
    say.add_argument("--speed", type=float, default=1.0, help=f"speaking rate {SPEED.range_text}")
    say.add_argument("--pitch", type=float, default=1.0, help=f"pitch factor {PITCH.range_text}")
    say.add_argument(
        "--seed",
        type=int,
        default=None,
        help="sampling seed: the same seed and settings give the same audio (default: random)",
    )
    say.add_argument("--list-voices", action="store_true", help="list voices and exit")
    TTSConfig.add_cli_arguments(say)
    return parser


def _voice_arg(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _options(args: argparse.Namespace) -> dict[str, int]:
    """Backend options from the command line (only those given)."""
    return {} if args.seed is None else {"seed": args.seed}


async def _say(args: argparse.Namespace) -> int:
    config = TTSConfig.from_args(args)
    engine = TTSEngine(config)
    started = time.perf_counter()
    await engine.initialize()
    load_s = time.perf_counter() - started
    try:
        if args.list_voices:
            for index, name in enumerate(await engine.get_available_speakers()):
                print(f"{index}\t{name}")
            return 0
        voice = _voice_arg(args.voice)
        if args.file is not None:
            return await _say_file(engine, args, voice)
        text = args.text
        if text is None or text == "-":
            if sys.stdin.isatty():
                print("error: give TEXT, --file, or pipe text on stdin", file=sys.stderr)
                return 2
            text = sys.stdin.read()
        output = args.output or Path("out.wav")
        t0 = time.perf_counter()
        first = None
        chunks: list[bytes] = []
        stream = engine.synthesize_streaming(text, voice, args.speed, args.pitch, **_options(args))
        async for chunk in stream:
            if first is None:
                first = time.perf_counter() - t0
            chunks.append(chunk)
        total = time.perf_counter() - t0
        pcm = b"".join(chunks)
        write_wav(output, pcm, config.sample_rate)
        audio_s = len(pcm) / 2 / config.sample_rate
        health = await engine.health_check()
        print(f"wrote {output} ({audio_s:.2f} s of audio, {len(chunks)} chunks)")
        print(
            f"engine={health.get('engine')} model={health.get('model')} status={health['status']} "
            f"load={load_s:.2f}s first_chunk={(first or 0) * 1000:.0f}ms "
            f"synthesis={total:.3f}s rtf={total / max(audio_s, 1e-9):.3f}"
        )
        return 0
    finally:
        await engine.cleanup()


async def _say_file(engine: TTSEngine, args: argparse.Namespace, voice: int | str | None) -> int:
    from tqdm import tqdm

    lines = [line.strip() for line in args.file.read_text(encoding="utf-8").splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line]
    if not numbered:
        print(f"error: {args.file} has no non-empty lines", file=sys.stderr)
        return 2
    outdir = args.output or Path("out")
    bar = tqdm(total=len(numbered), unit="line", desc="synthesising", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    t0 = time.perf_counter()
    result = await engine.synthesize_batch(
        [line for _, line in numbered],
        [voice] * len(numbered),
        speed=args.speed,
        pitch=args.pitch,
        on_progress=progress,
        **_options(args),
    )
    bar.close()
    total_audio = 0.0
    for index, (line_no, _) in enumerate(numbered):
        if index in result.errors:
            print(f"line {line_no}: failed: {result.errors[index]}", file=sys.stderr)
            continue
        write_wav(outdir / f"{line_no:04d}.wav", result[index].tobytes(), engine.config.sample_rate)
        total_audio += result[index].size / engine.config.sample_rate
    elapsed = time.perf_counter() - t0
    ok = len(numbered) - len(result.errors)
    print(
        f"wrote {ok}/{len(numbered)} files to {outdir}/ ({total_audio:.1f} s of audio "
        f"in {elapsed:.1f} s, rtf={elapsed / max(total_audio, 1e-9):.3f})"
    )
    return 1 if result.errors else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pipecat-vibevoice`` command."""
    args = build_parser().parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO")
    try:
        if args.command == "say":
            return asyncio.run(_say(args))
    except ValueError as exc:  # bad input: clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
