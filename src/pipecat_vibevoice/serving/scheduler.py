"""Earliest-deadline-first admission of engine work across connections.

The engine runs backends in a small FIFO thread pool, one unit of model work per
call. With many streams, FIFO gives every stream the same share, so a stream whose
client is about to run dry waits behind one that has seconds of audio buffered, and
new utterances wait behind everyone (slow first chunk). Here each pull of the next
chunk waits for one of ``width`` slots (the pool's width), and a freed slot goes to
the waiting pull whose client runs out of audio soonest:

* a playing stream's deadline is when its delivered audio ends (first send + audio sent);
* a new utterance's deadline is its start plus a small slack, so it goes ahead of
  streams with more than that buffered (fast first chunk) but not of one about to
  underrun.

Work-conserving: with nothing else waiting, a stream far ahead still runs at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

#: How long a new utterance may yield to streams that are about to run dry.
FIRST_CHUNK_SLACK_S = 0.1


class DeadlineGate:
    """At most ``width`` holders at once; waiters are served by earliest deadline."""

    def __init__(self, width: int) -> None:
        self.width = max(1, width)
        self.running = 0
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        """Pulls queued for a slot."""
        return sum(1 for *_, fut in self._waiting if not fut.done())

    async def acquire(self, deadline: float) -> None:
        """Wait for a slot; ``deadline`` (perf_counter seconds) orders the waiters."""
        if self.running < self.width and not self.waiting:
            self.running += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (deadline, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over as we were cancelled
            raise

    def release(self) -> None:
        """Hand the slot to the most urgent waiter, or free it."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self.running = max(0, self.running - 1)
