"""The worker threads model calls run on, one chunk per call.

A backend is a blocking iterator of audio pieces. :class:`ModelWorkers` pulls it one
piece per executor call, so between two pieces the event loop can see that the consumer
has gone (and set the request's stop event) and a backend stops within one chunk: a
Python thread cannot be cancelled, so this is what "stop within a chunk" rests on.

A batching backend (VibeVoice with ``max_batch`` > 1) blocks a worker thread per running
stream until its next batched step. A stream queued inside the backend would block one
too, and with enough of them every worker would wait on a queued stream while the running
ones never get a thread to take their audio; so such streams wait for a place at an
``asyncio`` gate, holding no thread.

The executor can be replaced (:meth:`ModelWorkers.replace_executor`): the serving API
puts an earliest-deadline-first pool in front of the model calls
(:mod:`.scheduling`), and reads each call's deadline from a
context variable the caller set, which ``run_in_executor`` carries along.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from ..server_load import usable_cores
from .backends.base import AudioPiece, SpeechBackend, SynthesisRequest

_END = object()


def pool_width(backend: SpeechBackend) -> int:
    """Worker threads: up to 4 (CPU-bound backends), at least what a batching backend serves."""
    workers = max(1, min(4, int(usable_cores())))
    return max(workers, backend.concurrent_streams() or 0)


def threads_per_call(width: int) -> int:
    """Intra-op threads for one model call: the usable cores shared among ``width`` workers.

    Workers already run calls side by side, so a call that also spreads over every core
    oversubscribes them under load: on the project's 2-core box, Piper with 2 threads per
    call used 0.090-0.113 CPU-s per audio second against 0.077-0.079 with 1 (quiet, same
    sentences), while its first window came only 0-10 ms sooner. ``width × threads``
    stays within the cores.
    """
    return max(1, int(usable_cores()) // max(1, width))


class _SerialIterator:
    """A blocking iterator driven from worker threads, one call at a time."""

    def __init__(self, iterator: Iterator[AudioPiece]) -> None:
        self._iterator = iterator
        self._lock = threading.Lock()

    def next(self) -> Any:
        with self._lock:
            return next(self._iterator, _END)

    def close(self) -> None:
        with self._lock:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()


class ModelWorkers:
    """The engine's worker pool for one loaded backend, and its stream gate."""

    def __init__(self, backend: SpeechBackend) -> None:
        self.backend = backend
        self.executor: Executor = ThreadPoolExecutor(pool_width(backend), thread_name_prefix="tts")
        self._gate: asyncio.Semaphore | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None

    @property
    def width(self) -> int:
        """Model calls that run at once."""
        return max(1, getattr(self.executor, "_max_workers", 1))

    def replace_executor(self, executor: Executor) -> Executor:
        """Run model calls on ``executor`` from now on; returns the previous pool."""
        previous, self.executor = self.executor, executor
        return previous

    def shutdown(self) -> None:
        """Stop the pool; calls under way finish, queued ones are dropped."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a worker, or on a thread of its own once the pool is shut down."""
        try:
            self.executor.submit(fn)
        except RuntimeError:  # cleanup raced a stream
            threading.Thread(target=fn, name="tts-close", daemon=True).start()

    def _stream_gate(self) -> asyncio.Semaphore | None:
        """At most ``backend.concurrent_streams()`` streams at once (None: no limit)."""
        limit = self.backend.concurrent_streams()
        if not limit:
            return None
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:
            self._gate, self._gate_loop = asyncio.Semaphore(limit), loop
        return self._gate

    async def pull(self, request: SynthesisRequest) -> AsyncIterator[AudioPiece]:
        """One backend ``stream(request)``, pulled one piece per worker call."""
        gate = self._stream_gate()
        async with gate if gate is not None else contextlib.nullcontext():
            loop = asyncio.get_running_loop()
            executor = self.executor
            stream = _SerialIterator(self.backend.stream(request))
            try:
                while True:
                    piece = await loop.run_in_executor(executor, stream.next)
                    if piece is _END:
                        return
                    yield piece
            finally:
                # A worker may still be inside next(); closing takes the same lock, so
                # the backend generator is closed right after that one chunk, in a
                # worker, without making the cancelled consumer wait for it.
                self.run_soon(stream.close)
