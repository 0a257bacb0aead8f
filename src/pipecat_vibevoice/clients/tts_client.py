"""Example client of ``WS /v1/tts/stream``: speak text, then play or save the audio.

Examples::

    python -m pipecat_vibevoice.clients.tts_client "Hello there." -o hello.wav
    python -m pipecat_vibevoice.clients.tts_client "Hello there." --play          # aplay/paplay/ffplay
    echo "Streamed like LLM output." | python -m pipecat_vibevoice.clients.tts_client - --append
    python -m pipecat_vibevoice.clients.tts_client "Hi." --url wss://host/v1/tts/stream --token SECRET

It is also a compact reference of the protocol (docs/serving.md has the full one):
connect, read ``ready``, send ``speak`` (or ``speak`` with ``final: false`` and then
``append`` pieces and ``flush``), send ``end``, then read ``chunk`` events each followed
by one binary PCM16 frame, until ``done`` (or ``error``) and ``closing``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..wav import write_wav

DEFAULT_URL = "ws://127.0.0.1:8000/v1/tts/stream"


def build_parser() -> argparse.ArgumentParser:
    """The client's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m pipecat_vibevoice.clients.tts_client",
        description="Speak TEXT through a pipecat-vibevoice TTS server and play or save it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("text", help="text to speak ('-' reads stdin)")
    parser.add_argument("--url", default=DEFAULT_URL, help="server websocket URL")
    parser.add_argument("-o", "--output", type=Path, help="write a WAV file here")
    parser.add_argument("--play", action="store_true", help="play through aplay/paplay/ffplay")
    parser.add_argument("--voice", default=None, help="voice name or index")
    parser.add_argument("--speed", type=float, default=1.0, help="0.5..2.0")
    parser.add_argument("--pitch", type=float, default=1.0, help="0.5..2.0")
    parser.add_argument("--token", default=None, help="bearer token, if the server wants one")
    parser.add_argument(
        "--append",
        action="store_true",
        help="send the text word by word as 'append' messages (like streamed LLM output)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for audio")
    return parser


def _player() -> list[str] | None:
    """A command that plays raw 24 kHz-ish PCM16 from stdin, if one is installed."""
    if shutil.which("aplay"):
        return ["aplay", "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", "{rate}"]
    if shutil.which("paplay"):
        return ["paplay", "--raw", "--format=s16le", "--channels=1", "--rate={rate}"]
    if shutil.which("ffplay"):
        return ["ffplay", "-autoexit", "-nodisp", "-loglevel", "error", "-f", "s16le",
                "-ac", "1", "-ar", "{rate}", "-"]  # fmt: skip
    return None


async def speak(args: argparse.Namespace, text: str) -> tuple[bytes, int, dict[str, Any]]:
    """Run one utterance; returns (pcm, sample_rate, done event). Raises on ``error``."""
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    started = time.perf_counter()
    first_audio: float | None = None
    audio = bytearray()
    done: dict[str, Any] = {}
    async with connect(args.url, additional_headers=headers, max_size=None) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), args.timeout))
        if ready.get("type") == "error":
            raise RuntimeError(f"server refused: {ready.get('reason')}: {ready.get('message')}")
        rate = int(ready["sample_rate"])
        settings = {"voice": args.voice, "speed": args.speed, "pitch": args.pitch}
        if args.append:
            words = text.split(" ")
            await ws.send(json.dumps({"type": "speak", "id": "cli", "text": words[0],
                                      "final": False, **settings}))  # fmt: skip
            for word in words[1:]:
                await ws.send(json.dumps({"type": "append", "text": " " + word}))
            await ws.send(json.dumps({"type": "flush"}))
        else:
            await ws.send(json.dumps({"type": "speak", "id": "cli", "text": text, **settings}))
        await ws.send(json.dumps({"type": "end"}))
        while True:
            frame = await asyncio.wait_for(ws.recv(), args.timeout)
            if isinstance(frame, bytes):
                if first_audio is None:
                    first_audio = time.perf_counter()
                audio += frame
                continue
            message = json.loads(frame)
            if message["type"] == "error":
                raise RuntimeError(f"{message.get('reason')}: {message.get('message')}")
            if message["type"] == "done":
                done = message
            if message["type"] == "closing":
                break
    if first_audio is not None:
        done["client_first_audio_ms"] = round((first_audio - started) * 1000, 1)
    return bytes(audio), rate, done


def main(argv: list[str] | None = None) -> int:
    """Speak, then play and/or save; prints latency and duration."""
    parser = build_parser()
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        parser.error("no text to speak")
    try:
        pcm, rate, done = asyncio.run(speak(args, text))
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # websockets' handshake errors and the like
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    output = args.output
    if output is None and not args.play:
        output = Path("out.wav")
    if output is not None:
        write_wav(output, pcm, rate)
    print(
        f"{len(pcm) / 2 / rate:.2f}s of audio at {rate} Hz, first audio after "
        f"{done.get('client_first_audio_ms', 'n/a')} ms"
        f"{' (cached)' if done.get('cached') else ''}" + (f" -> {output}" if output else "")
    )
    if args.play:
        command = _player()
        if command is None:
            print("no audio player found (aplay, paplay, ffplay); use -o", file=sys.stderr)
            return 1
        subprocess.run([c.format(rate=rate) for c in command], input=pcm, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
