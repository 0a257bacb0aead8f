"""Admission and rate limiting for the TTS socket (access checks: ``web_access``).

All of these answer immediately: a full server says ``busy`` instead of letting every
connection slow down together, and a refused client learns why from a reason code.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Messages per second with a burst allowance (one bucket per connection)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        """Take one token; False when the bucket is empty (rate 0 = always allowed)."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class SlotPool:
    """A counted pool of slots taken without queueing (or with a short wait).

    An ``asyncio.Semaphore`` would make callers wait in line; here a caller that finds
    the pool full gets ``False`` (after ``wait_s`` at most) and answers ``busy``.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._freed: asyncio.Event | None = None

    def try_acquire(self) -> bool:
        """Take a slot if one is free (``size`` 0 = unlimited)."""
        if self.size and self.in_use >= self.size:
            return False
        self.in_use += 1
        return True

    async def acquire(self, wait_s: float) -> bool:
        """Take a slot, waiting up to ``wait_s`` for one to be released."""
        deadline = time.monotonic() + wait_s
        while not self.try_acquire():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._freed is None:
                self._freed = asyncio.Event()
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except TimeoutError:
                return False
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.in_use = max(0, self.in_use - 1)
        if self._freed is not None:
            self._freed.set()
