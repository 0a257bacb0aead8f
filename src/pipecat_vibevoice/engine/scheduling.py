"""Earliest-deadline-first model work across every stream on one engine.

The engine runs each unit of model work (one backend chunk) as one call in its thread
pool. A plain ``ThreadPoolExecutor`` runs those calls first come, first served, so
with many streams a stream whose listener is about to run dry waits behind streams
with seconds of audio buffered, and a new utterance waits behind everyone (slow first
chunk). :class:`DeadlineExecutor` replaces the engine's pool with one that runs the
queued call whose stream runs dry first:

* a playing stream's deadline is when the audio it has delivered ends;
* a new utterance's deadline is its start plus a small slack, so it goes ahead of
  streams with more than that buffered but not of one about to underrun;
* callers that set no deadline get "now", i.e. they are served in arrival order among
  themselves and ahead of streams with audio in hand.

Two callers set deadlines: the ``/v1/tts/stream`` server's stream
(:meth:`pipecat_vibevoice.serving.stream.UtteranceStream.synthesize`) and the Pipecat
service in the voice bot (``services.vibevoice.tts``), each from what its own listener
has been sent. Nothing here knows either.

Plain EDF fails when many utterances start at once. Sixteen first chunks at the same
instant take ~0.4 s of both cores on the project's 2-core box; their deadlines (start
plus 0.1 s) have all passed by then, so EDF keeps them ahead of every playing stream,
and the streams that started first, holding the 0.28 s of their first decoder window,
run dry while the others start (all 16 first sentences had an underrun). So the pool
keeps the two kinds of call apart: a *first chunk* runs before a playing stream's call
only while that stream's listener has more than ``dry_guard_s`` of audio left. Playing
streams are never starved by new ones, and new ones start as fast as the streams
already playing allow: under a burst, later first chunks wait a little longer instead of
earlier listeners hearing a gap. A stream whose first chunk has been sent is never
"new" again, whatever its deadline.

The deadline reaches the pool through a context variable, a channel no import shows, so
both ends are named here: a stream's owner calls :func:`set_pull_deadline` right
before it pulls its next chunk, and
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
    from .engine import TTSEngine

#: How long a new utterance may yield to streams that are about to run dry.
FIRST_CHUNK_SLACK_S = 0.1
#: A playing stream whose listener runs dry within this goes ahead of every first chunk
#: (the default of ``ServingSettings.dry_guard_ms``, which the bot's TTS router reads
#: too): one running call to wait for (54 ms median, 93 ms p95 on the 2-core box) plus
#: its own next call.
DRY_GUARD_S = 0.15

#: ``(time.perf_counter() by which the calling stream needs its next chunk, whether it
#: is a first chunk)``. Written only by :func:`set_pull_deadline`, read only through
#: :func:`current_pull_deadline` (by :meth:`DeadlineExecutor.submit`).
_DEADLINE: contextvars.ContextVar[tuple[float | None, bool]] = contextvars.ContextVar(
    "tts_deadline", default=(None, False)
)


def listener_deadline(
    opened_at: float, first_sent_at: float | None, audio_s: float
) -> tuple[float, bool]:
    """``(deadline, first_chunk)`` of a listener, for :func:`set_pull_deadline`.

    The one rule both callers use, on ``time.perf_counter()``'s clock: before anything
    has reached the listener, the time its utterance opened (``opened_at``) plus
    :data:`FIRST_CHUNK_SLACK_S`, marked as a first chunk; after, the time its first
    chunk went out plus the ``audio_s`` seconds of audio sent since (when the listener
    runs dry). The deadline of a first chunk is fixed when the utterance opens, not
    when each pull happens, so an utterance that pulls several times before its
    listener hears anything does not drift later with every pull.
    """
    if first_sent_at is None:
        return opened_at + FIRST_CHUNK_SLACK_S, True
    return first_sent_at + audio_s, False


def set_pull_deadline(deadline: float | None, *, first_chunk: bool = False) -> None:
    """Tell the engine pool when the calling task's listener runs out of audio.

    A stream's owner (the serving stream, the bot's TTS service) calls this in the task
    that pulls the engine's chunks, right before each pull. The reader is
    :meth:`DeadlineExecutor.submit`: pulling a chunk that needs model work makes the
    engine call ``loop.run_in_executor(pool, ...)`` (``engine/workers.py``) from that same
    task, and ``run_in_executor`` calls ``submit`` synchronously in the caller's context,
    so the value set here orders that call. A pull run as a task of its own (the start-up
    buffer's timed pull) copies the context when it is created: set the deadline first.
    ``None`` means "now" (what callers that never set one get). ``first_chunk`` marks
    the pull of an utterance whose listener has nothing yet: it yields to playing
    streams close to running dry (see the module docstring).
    """
    _DEADLINE.set((deadline, first_chunk))


def current_pull_deadline() -> tuple[float | None, bool]:
    """``(deadline, first_chunk)`` as the calling task last set them (``(None, False)``)."""
    return _DEADLINE.get()


_Call = tuple[float, int, Future, Callable[..., Any], tuple, dict]


class DeadlineExecutor(Executor):
    """A fixed pool of worker threads that runs the most urgent call first.

    Two queues, each earliest deadline first: calls of playing streams (and of callers
    with no deadline) and first chunks. A worker takes the earlier of the two heads,
    except that a playing stream within ``dry_guard_s`` of running dry goes first.
    """

    def __init__(
        self, workers: int, name: str = "tts-edf", *, dry_guard_s: float = DRY_GUARD_S
    ) -> None:
        self._max_workers = max(1, workers)  # same attribute as ThreadPoolExecutor
        self.dry_guard_s = dry_guard_s
        self._playing: list[_Call] = []
        self._starting: list[_Call] = []
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
            return len(self._playing) + len(self._starting)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn`` under the caller's deadline (now if unset).

        The deadline is what the calling task last passed to :func:`set_pull_deadline`
        (its stream's owner, before each pull); ``run_in_executor`` calls this method
        synchronously in the caller's context, which is how it arrives here.
        """
        deadline, first_chunk = current_pull_deadline()
        if deadline is None:
            deadline = time.perf_counter()
        future: Future = Future()
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            queue = self._starting if first_chunk else self._playing
            heapq.heappush(queue, (deadline, next(self._order), future, fn, args, kwargs))
            self._cv.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers (after the queue drains, unless ``cancel_futures``)."""
        with self._cv:
            self._shutdown = True
            if cancel_futures:
                for queue in (self._playing, self._starting):
                    for _, _, future, *_ in queue:
                        future.cancel()
                    queue.clear()
            self._cv.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()

    def _next_queue(self, now: float) -> list[_Call]:
        """The queue whose head runs next (at least one is not empty)."""
        playing, starting = self._playing, self._starting
        if not starting:
            return playing
        if not playing:
            return starting
        if playing[0][0] <= max(starting[0][0], now + self.dry_guard_s):
            return playing
        return starting

    def _work(self) -> None:
        while True:
            with self._cv:
                while not (self._playing or self._starting) and not self._shutdown:
                    self._cv.wait()
                if not (self._playing or self._starting):
                    return
                queue = self._next_queue(time.perf_counter())
                _, _, future, fn, args, kwargs = heapq.heappop(queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, like ThreadPoolExecutor
                future.set_exception(exc)


def install_deadline_executor(
    engine: TTSEngine, workers: int = 0, dry_guard_s: float = DRY_GUARD_S
) -> DeadlineExecutor | None:
    """Put a :class:`DeadlineExecutor` in front of ``engine``'s model calls.

    The old pool is shut down once its running calls end. Same width unless
    ``workers`` is given. Returns the executor (None when the engine is not initialised).
    """
    if not engine.is_initialized:
        return None
    if isinstance(engine.executor, DeadlineExecutor):  # already installed
        return engine.executor
    width = workers or engine.workers
    executor = DeadlineExecutor(width, dry_guard_s=dry_guard_s)
    current = engine.replace_executor(executor)
    if current is not None:
        current.shutdown(wait=False)
    logger.info(
        f"TTS engine pool: earliest-deadline-first, {width} workers, first chunks yield to "
        f"streams within {dry_guard_s * 1000:.0f} ms of running dry"
    )
    return executor
