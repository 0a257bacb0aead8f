"""One row per synthesis, written off the audio path.

:class:`SynthesisStore` is the interface; :class:`SQLiteStore` implements it (the
default, a file path in the settings) and :func:`open_store` picks one from a URL so a
real database can be added behind the same interface. ``record`` never blocks: rows go
to a bounded queue drained by one writer thread in batches. When the queue is full,
rows are dropped and counted; when the disk fails, the error is logged once and the
writer keeps draining (dropping) so the audio never waits for storage.
"""

from __future__ import annotations

import abc
import asyncio
import json
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

SCHEMA = """
CREATE TABLE IF NOT EXISTS syntheses (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at      REAL    NOT NULL,  -- unix seconds when the item started
    session_id      TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    text_sha256     TEXT    NOT NULL,  -- the text itself is never stored
    text_chars      INTEGER NOT NULL,
    voice           TEXT,
    speed           REAL,
    pitch           REAL,
    settings        TEXT,              -- JSON: engine options, sample rate, chunk ms, streamed
    engine          TEXT,
    audio_s         REAL    NOT NULL,
    first_chunk_ms  REAL,              -- item start to first chunk sent
    total_ms        REAL    NOT NULL,
    chunks          INTEGER NOT NULL,
    gap_mean_ms     REAL,              -- time between consecutive chunk sends
    gap_max_ms      REAL,
    underruns       INTEGER NOT NULL,  -- chunks sent later than the audio already sent lasts
    cache_hit       INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,  -- ok | cancelled | error | busy | disconnected
    error           TEXT
);
CREATE INDEX IF NOT EXISTS syntheses_created ON syntheses (created_at);
"""

COLUMNS = (
    "created_at", "session_id", "request_id", "text_sha256", "text_chars", "voice", "speed",
    "pitch", "settings", "engine", "audio_s", "first_chunk_ms", "total_ms", "chunks",
    "gap_mean_ms", "gap_max_ms", "underruns", "cache_hit", "outcome", "error",
)  # fmt: skip


@dataclass
class SynthesisRecord:
    """What one synthesis cost and how it went (one store row)."""

    session_id: str
    request_id: str
    text_sha256: str
    text_chars: int
    voice: str | None
    speed: float
    pitch: float
    engine: str | None
    audio_s: float
    total_ms: float
    chunks: int
    outcome: str
    cache_hit: bool = False
    first_chunk_ms: float | None = None
    gap_mean_ms: float | None = None
    gap_max_ms: float | None = None
    underruns: int = 0
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def row(self) -> tuple[Any, ...]:
        """Values in :data:`COLUMNS` order."""
        data = asdict(self)
        data["settings"] = json.dumps(self.settings, sort_keys=True)
        data["cache_hit"] = int(self.cache_hit)
        return tuple(data[c] for c in COLUMNS)


class SynthesisStore(abc.ABC):
    """Where synthesis records go. Implementations must never block ``record``."""

    @abc.abstractmethod
    def record(self, rec: SynthesisRecord) -> None:
        """Queue one row (returns at once; may drop under pressure)."""

    @abc.abstractmethod
    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued rows are written (or dropped); False on timeout."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Write what is queued and release the database."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """State for ``/health``."""


class NullStore(SynthesisStore):
    """Keeps nothing (``store_url=none``)."""

    def record(self, rec: SynthesisRecord) -> None:  # noqa: D102
        return None

    async def flush(self, timeout: float = 5.0) -> bool:  # noqa: D102
        return True

    async def close(self) -> None:  # noqa: D102
        return None

    def health(self) -> dict[str, Any]:  # noqa: D102
        return {"kind": "none", "status": "off"}


_STOP = object()

#: A failure within this many seconds of the previous one belongs to the same episode
#: and is not logged again, even if a write succeeded in between (a nearly full disk
#: accepts a row now and then: logging each flap would flood the log).
FAILURE_EPISODE_S = 300.0


class SQLiteStore(SynthesisStore):
    """SQLite file written by one background thread in batches."""

    def __init__(self, path: str | Path, max_queue: int = 10000, batch: int = 200) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._batch = batch
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.last_error: str | None = None
        self._warned_full = False
        self._last_failure_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="tts-store", daemon=True)
        self._closed = False
        self._thread.start()

    def record(self, rec: SynthesisRecord) -> None:
        """Queue a row; a full queue drops it (counted, logged once)."""
        if self._closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                logger.warning(f"synthesis store {self.path}: queue full, dropping rows")

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait for the writer to catch up (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Drain, then stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._queue.put, _STOP)
        await asyncio.to_thread(self._thread.join, 10.0)

    def health(self) -> dict[str, Any]:
        """Counts and the last error, for ``/health``."""
        return {
            "kind": "sqlite",
            "path": str(self.path),
            "status": "failing" if self.last_error else "ok",
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": self._queue.qsize(),
            "last_error": self.last_error,
        }

    # -- writer thread ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        return conn

    def _fail(self, exc: BaseException, rows: int) -> None:
        self.failed += rows
        now = time.monotonic()
        previous, self._last_failure_at = self._last_failure_at, now
        if previous is None or now - previous > FAILURE_EPISODE_S:
            # Logged once per episode; audio goes on regardless, /health has the counts.
            logger.error(f"synthesis store {self.path} failing, rows are dropped: {exc!r}")
        else:
            logger.debug(f"synthesis store {self.path} still failing: {exc!r}")
        self.last_error = repr(exc)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        sql = (
            f"INSERT INTO syntheses ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        )
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self._batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [item.row() for item in items if item is not _STOP]
            stop = len(rows) != len(items)
            try:
                if rows:
                    if conn is None:
                        conn = self._connect()
                    with conn:
                        conn.executemany(sql, rows)
                    self.written += len(rows)
                    self.last_error = None
            except (sqlite3.Error, OSError) as exc:
                self._fail(exc, len(rows))
                if conn is not None:
                    conn.close()
                    conn = None
            finally:
                for _ in items:
                    self._queue.task_done()
        if conn is not None:
            conn.close()


def open_store(url: str, max_queue: int = 10000) -> SynthesisStore:
    """A store for ``url``: ``none``/empty, ``sqlite:///path``, ``sqlite://`` (memory) or a path.

    Other schemes (``postgresql://`` …) are refused with a clear error until an
    implementation of :class:`SynthesisStore` for them is added.
    """
    url = (url or "").strip()
    if url.lower() in ("", "none", "off"):
        return NullStore()
    if url.startswith("sqlite://"):
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        path = url[len("sqlite://") :]
        path = path[1:] if path.startswith("/") else path
        return SQLiteStore(path or ":memory:", max_queue)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"store_url scheme {scheme!r} is not supported yet; use a SQLite path or "
            "sqlite:///path (implement SynthesisStore for other databases)"
        )
    return SQLiteStore(url, max_queue)
