"""Server settings and the ``bot.py`` command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..engine import TTSConfig
from ..pipeline.config import BotConfig
from ..server_load import DEFAULT_BUDGET_SHARE, DEFAULT_SESSION_CORES
from ..serving.settings import ServingSettings
from ..settings_base import EnvSettings, SettingsError

PipelineKind = Literal["vibevoice", "stock"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
TwilioResampler = Literal["line", "soxr"]
AdmissionMode = Literal["load", "off"]


@dataclass
class ServerSettings(EnvSettings):
    """Everything ``create_app`` needs.

    Attributes:
        host: Interface to bind (loopback by default: nothing is exposed unless asked).
        port: TCP port serving ``/``, ``/ws`` and ``/health``.
        pipeline: ``vibevoice`` (this stack) or ``stock`` (Pipecat's own Whisper and
            Piper services, per-connection models; the benchmark's peer).
        max_sessions: Refuse new connections beyond this many (0 = no fixed limit).
        admission: ``load`` (default): a new ``/ws`` or ``/telephony/*`` connection is
            refused (close 1013, with an RTVI ``error`` first) when one more conversation
            would not fit the measured load (:mod:`pipecat_vibevoice.server_load`);
            ``off``: only ``max_sessions`` limits.
        load_budget: Share of the usable cores conversations may take in all (0..1].
            See :data:`pipecat_vibevoice.server_load.DEFAULT_BUDGET_SHARE`.
        session_cost_cores: Cores one more conversation is assumed to take until this
            server has measured it (it learns the real figure while it serves).
        allowed_origins: Browser origins allowed on every socket (``/ws``,
            ``/telephony/*``, ``/v1/tts/stream``) beyond pages of this server itself;
            comma-separated, ``*`` = any. Clients that send no ``Origin`` are not browsers
            and are not subject to it (see :mod:`pipecat_vibevoice.web_access`).
        twilio_account_sid: Twilio account SID for hanging calls up (``auto_hang_up``);
            empty = the ``accountSid`` of each call's ``start`` message.
        twilio_auth_token: That account's auth token, read from
            ``PIPECAT_VIBEVOICE_TWILIO_AUTH_TOKEN`` only (a secret: no flag). With it, a
            call the bot ends (idle timeout, shutdown) is hung up through Twilio's REST
            API; without it the bot only closes the media stream, and no REST call is
            ever made.
        twilio_resampler: The phone line's 8 kHz ↔ pipeline rate conversions: ``line``
            (short FIR filters, ~3 ms, output with every message) or ``soxr`` (Pipecat's
            default stream resampler: ~0.1 s each way, in bursts; for comparison).
        log_level: loguru level for the server.
        tts_url: Remote TTS server(s) (``ws://host:port/v1/tts/stream``, a comma-separated
            list for failover). When set the bot loads no TTS model: every conversation
            speaks through :class:`~pipecat_vibevoice.services.RemoteTTSService` (bearer
            token: ``serving.token``, i.e. ``--tts-token``), and the bot does not serve
            ``/v1/tts/stream`` itself. Empty = the in-process engine.
        bot: Conversation settings, one pipeline per connection.
        tts: Engine settings (the process-wide TTS engine).
        serving: Settings of the TTS API (``WS /v1/tts/stream``, ``GET /metrics``).

    """

    GROUP: ClassVar[str] = "server"

    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind"})
    port: int = field(default=7860, metadata={"help": "TCP port"})
    pipeline: PipelineKind = field(
        default="vibevoice",
        metadata={"help": "'stock' serves Pipecat's own Whisper/Piper services (benchmark peer)"},
    )
    max_sessions: int = field(
        default=0, metadata={"help": "refuse connections beyond this many (0 = no limit)"}
    )
    admission: AdmissionMode = field(
        default="load",
        metadata={"help": "'load': refuse new conversations that would not fit the measured load"},
    )
    load_budget: float = field(
        default=DEFAULT_BUDGET_SHARE,
        metadata={"help": "share of the cores conversations may use, (0, 1]"},
    )
    session_cost_cores: float = field(
        default=DEFAULT_SESSION_CORES,
        metadata={"help": "cores per conversation assumed until measured (then learned)"},
    )
    allowed_origins: str = field(
        default="",
        metadata={
            "help": "browser origins allowed beyond this server's own pages, comma-separated "
            "('*' = any), on /ws, /telephony/* and /v1/tts/stream"
        },
    )
    twilio_account_sid: str = field(
        default="",
        metadata={
            "help": "Twilio account SID for hanging up calls the bot ends (with "
            "PIPECAT_VIBEVOICE_TWILIO_AUTH_TOKEN; empty = the call's own accountSid)"
        },
    )
    twilio_auth_token: str = field(
        default="",
        repr=False,
        metadata={"cli": False, "help": "Twilio auth token (environment only)"},
    )
    twilio_resampler: TwilioResampler = field(
        default="line",
        metadata={
            "help": "phone line rate conversion: 'line' (short FIR, ~3 ms) or 'soxr' "
            "(Pipecat's default, ~0.1 s in bursts)"
        },
    )
    log_level: LogLevel = field(default="INFO", metadata={"help": "log level"})
    tts_url: str = field(
        default="",
        metadata={
            "help": "remote TTS server(s), ws://host:port/v1/tts/stream, comma-separated for "
            "failover: load no TTS model here (token: --tts-token); empty = in-process engine"
        },
    )
    bot: BotConfig = field(default_factory=BotConfig.from_env)
    tts: TTSConfig = field(default_factory=TTSConfig.from_env)
    serving: ServingSettings = field(default_factory=ServingSettings.from_env)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be within 0..65535, got {self.port}")
        if self.pipeline not in ("vibevoice", "stock"):
            raise SettingsError(f"pipeline must be 'vibevoice' or 'stock', got {self.pipeline!r}")
        if self.twilio_resampler not in ("line", "soxr"):
            raise SettingsError(
                f"twilio_resampler must be 'line' or 'soxr', got {self.twilio_resampler!r}"
            )
        if any(
            not u.strip().startswith(("ws://", "wss://"))
            for u in self.tts_url.split(",")
            if u.strip()
        ):
            raise SettingsError(f"tts_url must be ws:// or wss:// URLs, got {self.tts_url!r}")
        if self.max_sessions < 0:
            raise SettingsError(f"max_sessions must be >= 0, got {self.max_sessions}")
        if self.admission not in ("load", "off"):
            raise SettingsError(f"admission must be 'load' or 'off', got {self.admission!r}")
        if not 0 < self.load_budget <= 1:
            raise SettingsError(f"load_budget must be in (0, 1], got {self.load_budget}")
        if self.session_cost_cores <= 0:
            raise SettingsError(f"session_cost_cores must be > 0, got {self.session_cost_cores}")


def build_parser() -> argparse.ArgumentParser:
    """The ``bot.py`` argument parser: server, conversation, engine and TTS API flags."""
    parser = argparse.ArgumentParser(
        prog="bot.py",
        description=(
            "Real-time voice bot on Pipecat: serves the browser client at GET /, one "
            "pipeline per websocket at WS /ws (protobuf frames, 16 kHz in, 24 kHz out) "
            "and GET /health. Runs offline by default: Silero VAD, faster-whisper "
            "tiny.en, the built-in offline responder (not a language model) and the "
            "VibeVoice engine (falls back to the bundled Piper voice without weights)."
        ),
    )
    for settings in (ServerSettings, BotConfig, TTSConfig, ServingSettings):
        settings.add_cli_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Settings from parsed flags; unset flags fall back to ``PIPECAT_VIBEVOICE_*``."""
    return ServerSettings.from_args(
        args,
        bot=BotConfig.from_args(args),
        tts=TTSConfig.from_args(args),
        serving=ServingSettings.from_args(args),
    )
