"""Settings of the TTS serving API: limits, security, cache and store.

Like the engine's :class:`~pipecat_vibevoice.engine.TTSConfig`, every field has a
default, an environment variable ``PIPECAT_VIBEVOICE_SERVING_<FIELD>`` and a CLI flag
``--tts-<field-with-dashes>`` (the ``tts-`` prefix keeps them apart from the bot's and
the engine's flags on the same command line). Validation runs at construction so a bad
value stops the server at start-up, naming the field.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..engine.config import parse_env_value, value_parser

ENV_PREFIX = "PIPECAT_VIBEVOICE_SERVING_"


def default_store_path() -> str:
    """``$XDG_STATE_HOME/pipecat-vibevoice/tts.sqlite3``: never the working directory."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(base / "pipecat-vibevoice" / "tts.sqlite3")


@dataclass
class ServingSettings:
    """Everything :func:`~.router.create_tts_router` needs.

    Attributes:
        max_connections: Open ``/v1/tts/stream`` sockets beyond this get ``busy`` (0 = no limit).
        max_active_syntheses: Utterances synthesising at once over all connections; the
            next one gets ``busy`` (cache hits do not count). This is what keeps a full
            server from slowing everyone down.
        admission_wait_s: How long an utterance may wait for a synthesis slot before
            ``busy`` (0 = answer at once).
        edf: Run the engine's model calls earliest-deadline-first across connections
            (see :mod:`.scheduler`); off keeps the engine's first-come pool.
        engine_workers: Threads of that pool (0 = the engine's own width).
        max_lead_s: When more utterances synthesise than the engine has workers, a
            stream more than this many seconds ahead of its listener waits (0 = never).
        prebuffer_ms: Audio gathered before an item's first chunk is sent: the listener
            starts with that much in hand, at the cost of the time to make it (0 = send
            the first chunk at once).
        prebuffer_wait_ms: ...but never longer than this after the first chunk was
            ready: the cost in first-chunk latency is bounded by it.
        max_queue: Items waiting on one connection (current one excluded).
        max_message_bytes: Largest client frame accepted.
        max_message_chars: Longest ``text`` in one ``speak``/``append``.
        max_utterance_chars: Longest utterance, all appends included.
        rate_limit_per_s: Messages per second per connection (token bucket; 0 = off).
        rate_limit_burst: Bucket size (messages accepted back to back).
        open_idle_s: An open utterance (``final: false``) that gets no text for this long
            is flushed, so an idle client cannot hold a synthesis slot.
        allowed_origins: Comma-separated browser origins allowed to connect; ``*`` allows
            any. Clients sending no ``Origin`` (non-browser) and same-host origins are
            always allowed.
        token: Bearer token the websocket requires (``Authorization: Bearer`` header or
            ``?token=`` query); empty = no authentication.
        send_timeout_s: A client that takes longer than this to accept one frame is
            disconnected (``slow_client``): the server never queues audio for it.
        cache_max_bytes: Memory bound of the response cache (0 disables it).
        cache_max_text_chars: Only texts up to this length are cached (frequent phrases).
        cache_dir: Directory where cache entries are also persisted (empty = memory only).
        cache_disk_max_bytes: Bound of that directory (least recently used files go first).
        store_url: Where synthesis rows go: a SQLite file path, ``sqlite:///path``, or
            ``none``.
        store_queue: Rows waiting for the background writer before new ones are dropped.

    """

    max_connections: int = 64
    max_active_syntheses: int = 8
    admission_wait_s: float = 0.0
    edf: bool = True
    engine_workers: int = 0
    max_lead_s: float = 1.0
    prebuffer_ms: int = 0
    prebuffer_wait_ms: int = 60
    max_queue: int = 32
    max_message_bytes: int = 65536
    max_message_chars: int = 5000
    max_utterance_chars: int = 20000
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 200
    open_idle_s: float = 15.0
    allowed_origins: str = ""
    token: str = ""
    send_timeout_s: float = 10.0
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_max_text_chars: int = 500
    cache_dir: str = ""
    cache_disk_max_bytes: int = 512 * 1024 * 1024
    store_url: str = field(default_factory=lambda: default_store_path())
    store_queue: int = 10000

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in (
            "max_connections",
            "max_queue",
            "engine_workers",
            "prebuffer_ms",
            "prebuffer_wait_ms",
            "cache_max_bytes",
            "cache_disk_max_bytes",
            "cache_max_text_chars",
            "rate_limit_burst",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_active_syntheses", "max_message_bytes", "max_message_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_utterance_chars < self.max_message_chars:
            raise ValueError(
                f"max_utterance_chars ({self.max_utterance_chars}) must be >= "
                f"max_message_chars ({self.max_message_chars})"
            )
        if self.rate_limit_per_s < 0 or self.admission_wait_s < 0:
            raise ValueError("rate_limit_per_s and admission_wait_s must be >= 0")
        if self.rate_limit_per_s > 0 and self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be >= 1 when rate limiting is on")
        if self.max_lead_s < 0:
            raise ValueError(f"max_lead_s must be >= 0, got {self.max_lead_s}")
        if self.open_idle_s <= 0:
            raise ValueError(f"open_idle_s must be > 0, got {self.open_idle_s}")
        if self.send_timeout_s <= 0:
            raise ValueError(f"send_timeout_s must be > 0, got {self.send_timeout_s}")
        if self.store_queue < 1:
            raise ValueError(f"store_queue must be >= 1, got {self.store_queue}")

    @property
    def origins(self) -> frozenset[str]:
        """The allow-list as a set of normalised origins (scheme://host[:port])."""
        return frozenset(
            o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip()
        )

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain dict for logs and ``/health`` (the token is never shown)."""
        data = asdict(self)
        if redact:
            data["token"] = "set" if self.token else ""
        return data

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ServingSettings:
        """Defaults, then ``PIPECAT_VIBEVOICE_SERVING_*`` variables, then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = parse_env_value(ENV_PREFIX + f.name.upper(), f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--tts-<field>`` flag per field (defaults come from the environment)."""
        group = parser.add_argument_group(
            "tts serving", f"WS /v1/tts/stream settings (also read from {ENV_PREFIX}<NAME>)"
        )
        for f in fields(cls):
            group.add_argument(
                "--tts-" + f.name.replace("_", "-"),
                dest=f"serving_{f.name}",
                default=None,
                type=value_parser(f.type),
                help=_HELP.get(f.name, "")
                + f" (default {f.default if f.default is not MISSING else f.default_factory()!r})",
            )

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServingSettings:
        """Environment first, then the flags that were given."""
        overrides = {
            f.name: getattr(args, f"serving_{f.name}", None)
            for f in fields(cls)
            if getattr(args, f"serving_{f.name}", None) is not None
        }
        return cls.from_env(environ, **overrides)


_HELP = {
    "max_connections": "open TTS sockets before 'busy' (0 = no limit)",
    "max_active_syntheses": "utterances synthesising at once before 'busy'",
    "admission_wait_s": "seconds an utterance may wait for a synthesis slot",
    "edf": "earliest-deadline-first engine pool: 1 = on, 0 = engine's FIFO pool",
    "engine_workers": "threads of the engine pool (0 = the engine's own width)",
    "max_lead_s": "under contention, hold back streams this far ahead (0 = off)",
    "prebuffer_ms": "audio gathered before the first chunk goes out",
    "prebuffer_wait_ms": "longest the start-up buffer may delay the first chunk",
    "max_queue": "queued utterances per connection",
    "max_message_bytes": "largest client frame",
    "max_message_chars": "longest text in one message",
    "max_utterance_chars": "longest utterance (appends included)",
    "rate_limit_per_s": "messages per second per connection (0 = off)",
    "rate_limit_burst": "messages accepted back to back",
    "open_idle_s": "flush an open utterance after this long without text",
    "allowed_origins": "comma-separated browser origins allowed ('*' = any)",
    "token": "bearer token required on the TTS socket (empty = none)",
    "send_timeout_s": "disconnect a client that blocks one frame this long",
    "cache_max_bytes": "response cache memory bound (0 = off)",
    "cache_max_text_chars": "longest text that is cached",
    "cache_dir": "persist cache entries in this directory",
    "cache_disk_max_bytes": "bound of the cache directory",
    "store_url": "synthesis log: SQLite path, sqlite:///path or 'none'",
    "store_queue": "rows buffered for the store writer",
}
