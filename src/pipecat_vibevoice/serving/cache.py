"""Response cache for frequent phrases: whole utterances, replayed chunk by chunk.

Keyed by a hash of the text and everything that changes the audio (voice, speed,
pitch, engine options, engine model, sample rate, chunk size). An entry is only ever
added once its synthesis finished normally, from the chunks collected on the way; a
cancelled or failed synthesis simply drops its list, so no partial entry can exist.
Memory is bounded by bytes (LRU eviction); entries can also be persisted to a
directory (one file each, written atomically by rename) and are read back on a memory
miss, so a restart keeps the frequent phrases.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

_MAGIC = b"PVVC1\n"


@dataclass(frozen=True)
class CachedChunk:
    """One chunk of a cached utterance, with the words that start in it (``(word, start_s)``)."""

    pcm: bytes
    start_s: float
    end_s: float
    text: str = ""
    words: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CachedAudio:
    """A complete utterance: its chunks in order."""

    chunks: tuple[CachedChunk, ...]

    @property
    def nbytes(self) -> int:
        """PCM bytes held (what the memory bound counts)."""
        return sum(len(c.pcm) for c in self.chunks)

    @property
    def audio_s(self) -> float:
        """Duration of the utterance."""
        return self.chunks[-1].end_s if self.chunks else 0.0


def cache_key(text: str, voice: str, speed: float, pitch: float, identity: dict[str, Any]) -> str:
    """Stable hex key of an utterance request (text is hashed, never stored in the key)."""
    material = json.dumps(
        {
            "text": text,
            "voice": voice,
            "speed": round(speed, 4),
            "pitch": round(pitch, 4),
            **identity,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


class ResponseCache:
    """LRU of :class:`CachedAudio` bounded by total PCM bytes, optionally persisted."""

    def __init__(
        self,
        max_bytes: int,
        max_text_chars: int,
        directory: str | Path | None = None,
        disk_max_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.max_bytes = max_bytes
        self.disk_max_bytes = disk_max_bytes
        self.max_text_chars = max_text_chars
        self.directory = Path(directory) if directory else None
        self._items: OrderedDict[str, CachedAudio] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # get/put may run in worker threads (disk I/O)
        self.hits = 0
        self.misses = 0
        self._disk_failed = False
        self._writer: ThreadPoolExecutor | None = None
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                logger.error(f"response cache: cannot create {self.directory}: {exc}; memory only")
                self.directory = None
        self._disk_bytes = self._scan()[1] if self.directory is not None else 0

    @property
    def enabled(self) -> bool:
        """False when the cache is configured off."""
        return self.max_bytes > 0

    def cacheable(self, text: str) -> bool:
        """Only short texts (phrases) are worth keeping."""
        return self.enabled and len(text) <= self.max_text_chars

    def get(self, key: str) -> CachedAudio | None:
        """Memory first, then disk (which may block: call from a worker thread if persisted)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
        if entry is None and self.directory is not None and self.enabled:
            entry = self._read(key)
            if entry is not None:
                self._insert(key, entry)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def in_memory(self, key: str) -> bool:
        """True when ``get`` would not touch the disk."""
        with self._lock:
            return key in self._items

    def put(self, key: str, entry: CachedAudio) -> bool:
        """Add a complete utterance to memory (never blocks); False if it does not fit."""
        if not self.enabled or not entry.chunks or entry.nbytes > self.max_bytes:
            return False
        self._insert(key, entry)
        return True

    def persist(self, key: str, entry: CachedAudio) -> None:
        """Write an entry to the cache directory in the background (returns at once).

        One writer thread, so files are written in order and never compete with the
        audio path for more than one core; the write outlives a closing connection.
        """
        if self.directory is None or not self.enabled:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="tts-cache")
        self._writer.submit(self._persist_blocking, key, entry)

    def _persist_blocking(self, key: str, entry: CachedAudio) -> None:
        self._write(key, entry)
        self._prune()

    def close(self) -> None:
        """Finish pending writes."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _insert(self, key: str, entry: CachedAudio) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def stats(self) -> dict[str, Any]:
        """Numbers for ``/health`` and metrics."""
        total = self.hits + self.misses
        with self._lock:
            entries, size = len(self._items), self._bytes
        return {
            "enabled": self.enabled,
            "entries": entries,
            "bytes": size,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / total, 4) if total else 0.0,
            "persisted_to": str(self.directory) if self.directory else None,
        }

    # -- persistence ------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.pvvc"

    def _write(self, key: str, entry: CachedAudio) -> None:
        header = json.dumps(
            [[len(c.pcm), c.start_s, c.end_s, c.text, c.words] for c in entry.chunks],
            ensure_ascii=False,
        ).encode()
        path = self._path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(_MAGIC + len(header).to_bytes(4, "little") + header)
                for chunk in entry.chunks:
                    fh.write(chunk.pcm)
            os.replace(tmp, path)  # readers see the whole entry or none
            with self._lock:
                self._disk_bytes += path.stat().st_size
        except OSError as exc:
            if not self._disk_failed:
                logger.error(f"response cache: cannot persist to {self.directory}: {exc}")
                self._disk_failed = True
            tmp.unlink(missing_ok=True)

    def _scan(self) -> tuple[list[tuple[float, int, Path]], int]:
        """Entries on disk as (mtime, size, path), and their total size."""
        files = []
        assert self.directory is not None
        for path in self.directory.glob("*.pvvc"):
            try:
                st = path.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        return files, sum(f[1] for f in files)

    def _prune(self) -> None:
        """Delete least recently used files while the directory exceeds its bound."""
        with self._lock:
            if self._disk_bytes <= self.disk_max_bytes:
                return
        files, total = self._scan()
        files.sort()
        while files and total > self.disk_max_bytes:
            _, size, path = files.pop(0)
            path.unlink(missing_ok=True)
            total -= size
        with self._lock:
            self._disk_bytes = total

    def _read(self, key: str) -> CachedAudio | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: pruned last
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning(f"response cache: cannot read {path.name}: {exc}")
            return None
        try:
            if not data.startswith(_MAGIC):
                raise ValueError("bad magic")
            offset = len(_MAGIC)
            size = int.from_bytes(data[offset : offset + 4], "little")
            offset += 4
            header = json.loads(data[offset : offset + size])
            offset += size
            chunks = []
            for length, start, end, text, *rest in header:  # entries before words: 4 fields
                words = tuple((str(w), float(t)) for w, t in rest[0]) if rest else ()
                chunks.append(CachedChunk(data[offset : offset + length], start, end, text, words))
                offset += length
            if offset != len(data):
                raise ValueError("length mismatch")
        except (ValueError, TypeError) as exc:
            logger.warning(f"response cache: dropping corrupt entry {path.name}: {exc}")
            path.unlink(missing_ok=True)
            return None
        return CachedAudio(tuple(chunks))
