"""Prometheus metrics of the TTS serving API (``GET /metrics``).

Each router gets its own :class:`~prometheus_client.CollectorRegistry`, so several
apps in one process (tests, the bot and the TTS server together) never clash over
metric names, and ``/metrics`` shows exactly this service's numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Latency buckets in seconds: fine below 300 ms, where the first-chunk goal lies.
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
)
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """The service's counters, gauges and histograms on a private registry."""

    def __init__(self, cache_ratio: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.first_chunk = Histogram(
            "tts_first_chunk_latency_seconds",
            "Time from an item's start to its first audio chunk sent",
            ["cache"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_gap = Histogram(
            "tts_chunk_gap_seconds",
            "Time between consecutive audio chunks of one item",
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge(
            "tts_active_sessions", "Open /v1/tts/stream connections", registry=r
        )
        self.active_syntheses = Gauge(
            "tts_active_syntheses", "Utterances being synthesised now", registry=r
        )
        self.syntheses = Counter(
            "tts_syntheses", "Finished items by outcome", ["outcome"], registry=r
        )
        self.cache_requests = Counter(
            "tts_cache_requests", "Cache lookups by result", ["result"], registry=r
        )
        self.cache_hit_ratio = Gauge(
            "tts_cache_hit_ratio", "Hits over lookups since start", registry=r
        )
        if cache_ratio is not None:
            self.cache_hit_ratio.set_function(cache_ratio)
        self.errors = Counter(
            "tts_errors", "Error events sent to clients by reason", ["reason"], registry=r
        )
        self.audio_seconds = Counter("tts_audio_seconds", "Seconds of audio sent", registry=r)
        self.engine_queued = Gauge(
            "tts_engine_queued_calls",
            "Model calls waiting for an engine worker (earliest-deadline-first pool)",
            registry=r,
        )
        self.underruns = Counter(
            "tts_underruns", "Chunks sent later than the audio already sent would last", registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
