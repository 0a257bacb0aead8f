"""Settings of the TTS serving API: limits, security, cache and store.

Like the engine's :class:`~pipecat_vibevoice.engine.TTSConfig`, every field has a
default, an environment variable ``PIPECAT_VIBEVOICE_SERVING_<FIELD>`` and a CLI flag
``--tts-<field-with-dashes>`` (the ``tts-`` prefix keeps them apart from the bot's and
the engine's flags on the same command line; the rules are
:mod:`pipecat_vibevoice.settings_base`'s). Validation runs at construction so a bad
value stops the server at start-up, naming the field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..engine.scheduling import DRY_GUARD_S
from ..settings_base import EnvSettings, SettingsError


def default_store_path() -> str:
    """``$XDG_STATE_HOME/pipecat-vibevoice/tts.sqlite3``: never the working directory."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(base / "pipecat-vibevoice" / "tts.sqlite3")


@dataclass
class ServingSettings(EnvSettings):
    """Everything :func:`~.router.create_tts_router` needs.

    Attributes:
        max_connections: Open ``/v1/tts/stream`` sockets beyond this get ``busy`` (0 = no limit).
        max_active_syntheses: Utterances synthesising at once over all connections; the
            next one gets ``busy`` (cache hits do not count). This is what keeps a full
            server from slowing everyone down.
        admission_wait_s: How long an utterance may wait for a synthesis slot before
            ``busy`` (0 = answer at once).
        edf: Run the engine's model calls earliest-deadline-first across connections
            (see :mod:`..engine.scheduling`); off keeps the engine's first-come pool.
        engine_workers: Threads of that pool (0 = the engine's own width).
        dry_guard_ms: In that pool, a playing stream whose listener runs dry within this
            many milliseconds goes ahead of every new utterance's first chunk, so a burst
            of new utterances delays later first chunks rather than starving the
            listeners already playing (0 = plain earliest deadline first).
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
        replica: This server's name in a pool (``started`` events, ``/health``, store
            rows), so a client can tell which of several servers spoke; empty = not
            named (a single server). The Ray Serve deployment sets it to the replica's
            id (:mod:`pipecat_vibevoice.deploy.ray_serve`); a Kubernetes pod may set it
            to its pod name.

    """

    ENV_PREFIX: ClassVar[str] = "PIPECAT_VIBEVOICE_SERVING_"
    FLAG_PREFIX: ClassVar[str] = "tts-"
    GROUP: ClassVar[str] = "tts serving (WS /v1/tts/stream)"

    max_connections: int = field(
        default=64, metadata={"help": "open TTS sockets before 'busy' (0 = no limit)"}
    )
    max_active_syntheses: int = field(
        default=8, metadata={"help": "utterances synthesising at once before 'busy'"}
    )
    admission_wait_s: float = field(
        default=0.0, metadata={"help": "seconds an utterance may wait for a synthesis slot"}
    )
    edf: bool = field(
        default=True,
        metadata={"help": "earliest-deadline-first engine pool: 1 = on, 0 = engine's FIFO pool"},
    )
    engine_workers: int = field(
        default=0, metadata={"help": "threads of the engine pool (0 = the engine's own width)"}
    )
    dry_guard_ms: int = field(
        default=round(DRY_GUARD_S * 1000),
        metadata={"help": "playing streams this close to running dry go before first chunks"},
    )
    max_lead_s: float = field(
        default=1.0,
        metadata={"help": "under contention, hold back streams this far ahead (0 = off)"},
    )
    prebuffer_ms: int = field(
        default=0, metadata={"help": "audio gathered before the first chunk goes out"}
    )
    prebuffer_wait_ms: int = field(
        default=60, metadata={"help": "longest the start-up buffer may delay the first chunk"}
    )
    max_queue: int = field(default=32, metadata={"help": "queued utterances per connection"})
    max_message_bytes: int = field(default=65536, metadata={"help": "largest client frame"})
    max_message_chars: int = field(default=5000, metadata={"help": "longest text in one message"})
    max_utterance_chars: int = field(
        default=20000, metadata={"help": "longest utterance (appends included)"}
    )
    rate_limit_per_s: float = field(
        default=50.0, metadata={"help": "messages per second per connection (0 = off)"}
    )
    rate_limit_burst: int = field(default=200, metadata={"help": "messages accepted back to back"})
    open_idle_s: float = field(
        default=15.0, metadata={"help": "flush an open utterance after this long without text"}
    )
    token: str = field(
        default="", metadata={"help": "bearer token required on the TTS socket (empty = none)"}
    )
    send_timeout_s: float = field(
        default=10.0, metadata={"help": "disconnect a client that blocks one frame this long"}
    )
    cache_max_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "response cache memory bound (0 = off)"}
    )
    cache_max_text_chars: int = field(default=500, metadata={"help": "longest text that is cached"})
    cache_dir: str = field(default="", metadata={"help": "persist cache entries in this directory"})
    cache_disk_max_bytes: int = field(
        default=512 * 1024 * 1024, metadata={"help": "bound of the cache directory"}
    )
    store_url: str = field(
        default_factory=lambda: default_store_path(),
        metadata={"help": "synthesis log: SQLite path, sqlite:///path or 'none'"},
    )
    store_queue: int = field(default=10000, metadata={"help": "rows buffered for the store writer"})
    replica: str = field(
        default="",
        metadata={"help": "this server's name in a pool (started events, /health); empty = none"},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~pipecat_vibevoice.settings_base.SettingsError` naming the first invalid field."""
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
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_active_syntheses", "max_message_bytes", "max_message_chars"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_utterance_chars < self.max_message_chars:
            raise SettingsError(
                f"max_utterance_chars ({self.max_utterance_chars}) must be >= "
                f"max_message_chars ({self.max_message_chars})"
            )
        if self.rate_limit_per_s < 0 or self.admission_wait_s < 0:
            raise SettingsError("rate_limit_per_s and admission_wait_s must be >= 0")
        if self.rate_limit_per_s > 0 and self.rate_limit_burst < 1:
            raise SettingsError("rate_limit_burst must be >= 1 when rate limiting is on")
        if self.dry_guard_ms < 0:
            raise SettingsError(f"dry_guard_ms must be >= 0, got {self.dry_guard_ms}")
        if self.max_lead_s < 0:
            raise SettingsError(f"max_lead_s must be >= 0, got {self.max_lead_s}")
        if self.open_idle_s <= 0:
            raise SettingsError(f"open_idle_s must be > 0, got {self.open_idle_s}")
        if self.send_timeout_s <= 0:
            raise SettingsError(f"send_timeout_s must be > 0, got {self.send_timeout_s}")
        if self.store_queue < 1:
            raise SettingsError(f"store_queue must be >= 1, got {self.store_queue}")

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain dict for logs and ``/health`` (the token is never shown)."""
        data = asdict(self)
        if redact:
            data["token"] = "set" if self.token else ""
        return data
