"""The record of one served utterance: its outcome counted, and one store row.

Every utterance is recorded once, whatever its outcome (``ok``, ``busy``, ``error``,
``cancelled``, ``disconnected``), so the store shows refused and failed requests next
to the good ones. The text itself is never stored, only its hash and length. Writing
must never break the audio path: a failing store only logs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engine import TTSEngine
from .state import ServingState
from .store import SynthesisRecord
from .stream import StreamStats
from .utterance import Utterance

if TYPE_CHECKING:
    from loguru import Logger


@dataclass
class Outcome:
    """How an utterance ended, filled in while it is served."""

    kind: str = "ok"
    error: str | None = None
    cache_hit: bool = False
    voice: str | None = None  # None when the voice did not resolve
    created_at: float = field(default_factory=time.time)


def synthesis_record(
    session_id: str,
    utterance: Utterance,
    engine: TTSEngine,
    stats: StreamStats,
    outcome: Outcome,
    replica: str = "",
) -> SynthesisRecord:
    """The store row of ``utterance`` (figures rounded as docs/serving.md lists them).

    ``replica``: the server's name in a pool, kept in the row's ``settings`` so rows
    of several replicas sharing one store file stay attributable.
    """
    text = utterance.text.text
    gaps = stats.gaps
    first = stats.first_chunk_ms
    return SynthesisRecord(
        session_id=session_id,
        request_id=utterance.id,
        text_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        text_chars=len(text),
        voice=outcome.voice,
        speed=utterance.speed,
        pitch=utterance.pitch,
        engine=engine.backend.name,
        audio_s=round(stats.audio_s, 4),
        total_ms=round(stats.total_ms, 2),
        chunks=stats.chunks,
        outcome=outcome.kind,
        cache_hit=outcome.cache_hit,
        first_chunk_ms=round(first, 2) if first is not None else None,
        gap_mean_ms=round(sum(gaps) / len(gaps) * 1000, 2) if gaps else None,
        gap_max_ms=round(max(gaps) * 1000, 2) if gaps else None,
        underruns=stats.underruns,
        error=outcome.error,
        settings={
            "options": utterance.options,
            "sample_rate": engine.config.sample_rate,
            "chunk_ms": engine.config.chunk_ms,
            "streamed_text": utterance.streamed,
        }
        | ({"replica": replica} if replica else {}),
        created_at=outcome.created_at,
    )


def record_utterance(
    state: ServingState,
    engine: TTSEngine,
    session_id: str,
    utterance: Utterance,
    stats: StreamStats,
    outcome: Outcome,
    log: Logger,
) -> None:
    """Count the outcome and the audio sent, and queue the store row (never raises)."""
    state.metrics.syntheses.labels(outcome.kind).inc()
    state.metrics.audio_seconds.inc(stats.audio_s)
    try:
        state.store.record(
            synthesis_record(session_id, utterance, engine, stats, outcome, state.settings.replica)
        )
    except Exception as exc:  # the store must never break the audio path
        log.warning(f"could not record synthesis {utterance.id}: {exc!r}")
