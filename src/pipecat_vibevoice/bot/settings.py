"""Server settings and the ``bot.py`` command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

from ..engine import TTSConfig
from ..pipeline.config import BotConfig
from ..serving.settings import ServingSettings

PipelineKind = Literal["vibevoice", "stock"]


@dataclass
class ServerSettings:
    """Everything ``create_app`` needs.

    Attributes:
        host: Interface to bind (loopback by default: nothing is exposed unless asked).
        port: TCP port serving ``/``, ``/ws`` and ``/health``.
        bot: Conversation settings, one pipeline per connection.
        tts: Engine settings (the process-wide TTS engine).
        pipeline: ``vibevoice`` (this stack) or ``stock`` (Pipecat's own Whisper and
            Piper services, per-connection models; the benchmark's peer).
        max_sessions: Refuse new connections beyond this many (0 = no limit).
        log_level: loguru level for the server.
        serving: Settings of the TTS API (``WS /v1/tts/stream``, ``GET /metrics``).

    """

    host: str = "127.0.0.1"
    port: int = 7860
    bot: BotConfig = field(default_factory=BotConfig)
    tts: TTSConfig = field(default_factory=TTSConfig.from_env)
    pipeline: PipelineKind = "vibevoice"
    max_sessions: int = 0
    log_level: str = "INFO"
    serving: ServingSettings = field(default_factory=ServingSettings.from_env)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.pipeline not in ("vibevoice", "stock"):
            raise ValueError(f"pipeline must be 'vibevoice' or 'stock', got {self.pipeline!r}")
        if self.max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0, got {self.max_sessions}")


def build_parser() -> argparse.ArgumentParser:
    """The ``bot.py`` argument parser: server, conversation and engine flags."""
    parser = argparse.ArgumentParser(
        prog="bot.py",
        description=(
            "Real-time voice bot on Pipecat: serves the browser client at GET /, one "
            "pipeline per websocket at WS /ws (protobuf frames, 16 kHz in, 24 kHz out) "
            "and GET /health. Runs offline by default: Silero VAD, faster-whisper "
            "tiny.en, the built-in offline responder (not a language model) and the "
            "VibeVoice engine (falls back to the bundled Piper voice without weights)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="interface to bind")
    server.add_argument("--port", type=int, default=7860, help="TCP port")
    server.add_argument(
        "--pipeline",
        choices=("vibevoice", "stock"),
        default="vibevoice",
        help="'stock' serves Pipecat's own Whisper/Piper services instead (benchmark peer)",
    )
    server.add_argument(
        "--max-sessions",
        type=int,
        default=0,
        help="refuse connections beyond this many (0 = no limit)",
    )
    server.add_argument(
        "--log-level", default="INFO", choices=("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
    )
    BotConfig.add_cli_arguments(parser)
    TTSConfig.add_cli_arguments(parser)
    ServingSettings.add_cli_arguments(parser)  # WS /v1/tts/stream (docs/serving.md)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Settings from parsed flags (engine flags fall back to ``PIPECAT_VIBEVOICE_*``)."""
    return ServerSettings(
        host=args.host,
        port=args.port,
        bot=BotConfig.from_args(args),
        tts=TTSConfig.from_args(args),
        pipeline=args.pipeline,
        max_sessions=args.max_sessions,
        log_level=args.log_level,
        serving=ServingSettings.from_args(args),
    )
