"""Earliest-deadline-first model work across all connections.

The engine runs each unit of model work (one backend chunk) as one call in its thread
pool. A plain ``ThreadPoolExecutor`` runs those calls first come, first served, so
with many streams a stream whose listener is about to run dry waits behind streams
with seconds of audio buffered, and a new utterance waits behind everyone (slow first
chunk). :class:`DeadlineExecutor` replaces the engine's pool with one that runs the
queued call whose stream runs dry first:

* a playing stream's deadline is when the audio it has delivered ends;
* a new utterance's deadline is its start plus a small slack, so it goes ahead of
  streams with more than that buffered but not of one about to underrun;
* callers that set no deadline (the voice bot's own pipelines) get "now", i.e. they
  are served in arrival order among themselves and ahead of streams with audio in hand.

The deadline reaches the pool through a context variable, a channel no import shows, so
both ends are named here: the serving stream calls :func:`set_pull_deadline` right
before it pulls its next chunk (:meth:`.stream.UtteranceStream.synthesize`), and
:meth:`DeadlineExecutor.submit` reads it when the engine's ``run_in_executor`` call,
made in that same task, queues the model work. Only calls that do model work wait;
chunks the engine already has are handed over without touching the pool.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from ..engine import TTSEngine

#: How long a new utterance may yield to streams that are about to run dry.
FIRST_CHUNK_SLACK_S = 0.1

#: ``time.perf_counter()`` by which the calling stream needs its next chunk. Written only
#: by :func:`set_pull_deadline`, read only by :meth:`DeadlineExecutor.submit`.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tts_deadline", default=None
)


def set_pull_deadline(deadline: float | None) -> None:
    """Tell the engine pool when the calling task's listener runs out of audio.

    The serving stream (:meth:`.stream.UtteranceStream.synthesize`) calls this in the
    task that pulls the engine's chunks, right before each pull. The reader is
    :meth:`DeadlineExecutor.submit`: pulling a chunk that needs model work makes the
    engine call ``loop.run_in_executor(pool, ...)`` (``engine/workers.py``) from that same
    task, and ``run_in_executor`` calls ``submit`` synchronously in the caller's context,
    so the value set here orders that call. A pull run as a task of its own (the start-up
    buffer's timed pull) copies the context when it is created: set the deadline first.
    ``None`` means "now" (what callers that never set one get).
    """
    _DEADLINE.set(deadline)


class DeadlineExecutor(Executor):
    """A fixed pool of worker threads that runs the most urgent call first."""

    def __init__(self, workers: int, name: str = "tts-edf") -> None:
        self._max_workers = max(1, workers)  # same attribute as ThreadPoolExecutor
        self._queue: list[tuple[float, int, Future, Callable[..., Any], tuple, dict]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(self._max_workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        """Calls waiting for a worker."""
        with self._cv:
            return len(self._queue)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn`` under the caller's deadline (now if unset).

        The deadline is what the calling task last passed to :func:`set_pull_deadline`
        (the serving stream, before each pull); ``run_in_executor`` calls this method
        synchronously in the caller's context, which is how it arrives here.
        """
        deadline = _DEADLINE.get()
        if deadline is None:
            deadline = time.perf_counter()
        future: Future = Future()
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            heapq.heappush(self._queue, (deadline, next(self._order), future, fn, args, kwargs))
            self._cv.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers (after the queue drains, unless ``cancel_futures``)."""
        with self._cv:
            self._shutdown = True
            if cancel_futures:
                for *_, future, _fn, _args, _kwargs in self._queue:
                    future.cancel()
                self._queue.clear()
            self._cv.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._shutdown:
                    self._cv.wait()
                if not self._queue:
                    return
                _, _, future, fn, args, kwargs = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, like ThreadPoolExecutor
                future.set_exception(exc)


def install_deadline_executor(engine: TTSEngine, workers: int = 0) -> DeadlineExecutor | None:
    """Put a :class:`DeadlineExecutor` in front of ``engine``'s model calls.

    The old pool is shut down once its running calls end. Same width unless
    ``workers`` is given. Returns the executor (None when the engine is not initialised).
    """
    if not engine.is_initialized:
        return None
    if isinstance(engine.executor, DeadlineExecutor):  # already installed
        return engine.executor
    width = workers or engine.workers
    executor = DeadlineExecutor(width)
    current = engine.replace_executor(executor)
    if current is not None:
        current.shutdown(wait=False)
    logger.info(f"TTS engine pool: earliest-deadline-first, {width} workers")
    return executor
